//! Running a restic command again when it failed for a reason that passes by itself (the
//! storage could not be reached, another process held the repository lock), waiting twice as
//! long before each new attempt. Every other failure ends at once: a wrong password or a bad
//! argument is the same on the next run. A runner that lets restic wait for locks itself
//! (`--retry-lock`, [`crate::Restic::with_retry_lock`]) uses a policy that retries only storage
//! outages ([`RetryPolicy::without_lock_retries`]): restic already waited for the lock.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::ResticError;

/// How often and how patiently a failed command is run again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first; 0 never runs a command twice.
    pub retries: u32,
    /// Wait before the first retry; each later wait is twice the one before.
    pub first_delay: Duration,
    /// No wait is longer than this, however many retries are allowed.
    pub max_delay: Duration,
    /// Whether a held lock ([`ResticError::Locked`]) is retried; false when restic waited for
    /// it already (`--retry-lock`).
    pub retry_locked: bool,
}

/// The longest wait between two attempts unless a policy says otherwise.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(300);

impl Default for RetryPolicy {
    /// 3 retries after 2 s, 4 s and 8 s: an object store restarting or a short prune is
    /// waited out, a real outage fails the volume within half a minute.
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            first_delay: Duration::from_secs(2),
            max_delay: DEFAULT_MAX_DELAY,
            retry_locked: true,
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub const NEVER: RetryPolicy = RetryPolicy {
        retries: 0,
        first_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        retry_locked: false,
    };

    pub fn new(retries: u32, first_delay: Duration) -> Self {
        RetryPolicy {
            retries,
            first_delay,
            ..RetryPolicy::default()
        }
    }

    /// This policy for a runner whose restic waits for locks itself: a held lock after that
    /// wait fails at once, only storage outages are retried.
    pub fn without_lock_retries(self) -> Self {
        RetryPolicy {
            retry_locked: false,
            ..self
        }
    }

    /// Whether `error` is one this policy runs the command again for.
    pub fn retries(&self, error: &ResticError) -> bool {
        // restic retried that outage itself for the whole outage timeout already; running it
        // again would only wait as long once more.
        if matches!(error.last(), ResticError::StorageOutage { .. }) {
            return false;
        }
        if matches!(error.last(), ResticError::Locked { .. }) {
            return self.retry_locked;
        }
        error.is_retryable()
    }

    /// The first run and every retry.
    pub fn max_attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }

    /// The wait before retry number `retry` (1 = the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }

    /// The bookkeeping of one command's attempts; `cancel` ends any wait at once.
    pub fn attempts<'a>(&self, cancel: &'a CancellationToken) -> Attempts<'a> {
        Attempts {
            policy: *self,
            cancel,
            failed: 0,
        }
    }
}

/// A retry about to happen, for the caller to report before the wait.
#[derive(Debug)]
pub struct Retry {
    /// The attempt that failed (1 = the first run).
    pub failed_attempt: u32,
    pub max_attempts: u32,
    /// How long until the next attempt starts.
    pub delay: Duration,
    /// Why the attempt failed.
    pub error: ResticError,
}

/// Counts the failed attempts of one command. Use it in the caller's loop:
///
/// ```ignore
/// let mut attempts = policy.attempts(&cancel);
/// let snapshots = loop {
///     match restic.snapshots(&repository, &filter, &cancel).await {
///         Ok(found) => break found,
///         Err(error) => attempts.retry_after(error, |retry| report(retry)).await?,
///     }
/// };
/// ```
#[derive(Debug)]
pub struct Attempts<'a> {
    policy: RetryPolicy,
    cancel: &'a CancellationToken,
    failed: u32,
}

impl Attempts<'_> {
    /// Attempts that failed so far.
    pub fn failed(&self) -> u32 {
        self.failed
    }

    /// After a failed attempt: when the error is transient and attempts are left, calls
    /// `on_retry`, waits, and returns `Ok` for the caller to run the command again. Otherwise
    /// returns the error to give up with, naming the attempts when there was more than one;
    /// [`ResticError::Cancelled`] when `cancel` fires during the wait.
    pub async fn retry_after(
        &mut self,
        error: ResticError,
        on_retry: impl FnOnce(&Retry),
    ) -> Result<(), ResticError> {
        self.failed += 1;
        let attempts = self.failed;
        if error.is_cancelled()
            || !self.policy.retries(&error)
            || attempts >= self.policy.max_attempts()
        {
            if attempts == 1 || error.is_cancelled() {
                return Err(error);
            }
            return Err(ResticError::GaveUp {
                attempts,
                last: Box::new(error),
            });
        }
        let retry = Retry {
            failed_attempt: attempts,
            max_attempts: self.policy.max_attempts(),
            delay: self.policy.delay(attempts),
            error,
        };
        on_retry(&retry);
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(ResticError::Cancelled {
                command: retry.error.command().to_string(),
            }),
            () = tokio::time::sleep(retry.delay) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::time::Instant;

    use super::*;

    fn unreachable() -> ResticError {
        ResticError::StorageUnreachable {
            command: "backup".into(),
            repository: "s3:http://127.0.0.1:1/b/r".into(),
            stderr: "dial tcp 127.0.0.1:1: connect: connection refused".into(),
        }
    }

    fn locked() -> ResticError {
        ResticError::Locked {
            command: "backup".into(),
            repository: "/r".into(),
            stderr: "repository is already locked exclusively".into(),
        }
    }

    fn wrong_password() -> ResticError {
        ResticError::WrongPassword {
            command: "backup".into(),
            repository: "/r".into(),
        }
    }

    /// Runs a command whose attempts end as `outcomes` say (then succeed) under `policy`;
    /// returns the result, the number of runs and the waits reported before each retry.
    async fn run(
        policy: RetryPolicy,
        cancel: &CancellationToken,
        outcomes: Vec<Result<&'static str, ResticError>>,
    ) -> (Result<&'static str, ResticError>, u32, Vec<Duration>) {
        let mut outcomes = VecDeque::from(outcomes);
        let mut attempts = policy.attempts(cancel);
        let mut runs = 0;
        let mut waits = Vec::new();
        let result = loop {
            runs += 1;
            match outcomes.pop_front().unwrap_or(Ok("done")) {
                Ok(value) => break Ok(value),
                Err(error) => {
                    if let Err(error) = attempts
                        .retry_after(error, |retry| waits.push(retry.delay))
                        .await
                    {
                        break Err(error);
                    }
                }
            }
        };
        (result, runs, waits)
    }

    #[test]
    fn waits_double_up_to_the_cap() {
        let policy = RetryPolicy {
            retries: 40,
            first_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            retry_locked: true,
        };
        let waits: Vec<_> = (1..=7).map(|retry| policy.delay(retry).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(policy.delay(40), Duration::from_secs(60), "no overflow");
        assert_eq!(RetryPolicy::default().max_attempts(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_after_growing_waits() {
        let started = Instant::now();
        let policy = RetryPolicy::new(3, Duration::from_secs(2));
        let cancel = CancellationToken::new();
        let (result, runs, waits) =
            run(policy, &cancel, vec![Err(unreachable()), Err(locked())]).await;
        assert_eq!(result.unwrap(), "done");
        assert_eq!(runs, 3);
        assert_eq!(waits, [Duration::from_secs(2), Duration::from_secs(4)]);
        assert_eq!(started.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_names_the_attempts_and_the_last_error() {
        let policy = RetryPolicy::new(2, Duration::from_millis(100));
        let cancel = CancellationToken::new();
        let (result, runs, waits) = run(
            policy,
            &cancel,
            vec![Err(unreachable()), Err(unreachable()), Err(unreachable())],
        )
        .await;
        let error = result.unwrap_err();
        assert_eq!(runs, 3);
        assert_eq!(waits.len(), 2);
        assert!(
            matches!(&error, ResticError::GaveUp { attempts: 3, last } if matches!(**last, ResticError::StorageUnreachable { .. })),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("3 attempts") && message.contains("connection refused"),
            "{message}"
        );
        assert!(
            error.is_retryable(),
            "still transient for whoever asks next"
        );
        assert_eq!(error.stderr(), unreachable().stderr());
    }

    #[tokio::test(start_paused = true)]
    async fn lasting_failures_are_not_retried() {
        let policy = RetryPolicy::new(3, Duration::from_secs(2));
        let cancel = CancellationToken::new();
        let (result, runs, waits) = run(policy, &cancel, vec![Err(wrong_password())]).await;
        assert!(matches!(result, Err(ResticError::WrongPassword { .. })));
        assert_eq!((runs, waits.len()), (1, 0));
        let invalid = ResticError::InvalidArgument {
            command: "backup".into(),
            reason: "tag with a comma".into(),
        };
        let (result, runs, _) = run(policy, &cancel, vec![Err(invalid)]).await;
        assert!(matches!(result, Err(ResticError::InvalidArgument { .. })));
        assert_eq!(runs, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_failure_after_a_retry_still_counts_the_attempts() {
        let policy = RetryPolicy::new(3, Duration::from_secs(2));
        let cancel = CancellationToken::new();
        let (result, runs, _) = run(
            policy,
            &cancel,
            vec![Err(unreachable()), Err(wrong_password())],
        )
        .await;
        let error = result.unwrap_err();
        assert_eq!(runs, 2);
        assert!(
            matches!(&error, ResticError::GaveUp { attempts: 2, last } if matches!(**last, ResticError::WrongPassword { .. })),
            "{error:?}"
        );
        assert!(!error.is_retryable());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lock_restic_waited_for_is_not_retried_but_an_outage_is() {
        let policy = RetryPolicy::new(3, Duration::from_secs(2)).without_lock_retries();
        let cancel = CancellationToken::new();
        let (result, runs, waits) = run(policy, &cancel, vec![Err(locked())]).await;
        assert!(
            matches!(result, Err(ResticError::Locked { .. })),
            "{result:?}"
        );
        assert_eq!((runs, waits.len()), (1, 0));
        let (result, runs, waits) = run(
            policy,
            &cancel,
            vec![Err(unreachable()), Err(unreachable())],
        )
        .await;
        assert_eq!(result.unwrap(), "done");
        assert_eq!((runs, waits.len()), (3, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn no_retries_means_one_run_and_the_plain_error() {
        let cancel = CancellationToken::new();
        let (result, runs, _) = run(RetryPolicy::NEVER, &cancel, vec![Err(unreachable())]).await;
        assert_eq!(runs, 1);
        assert!(matches!(
            result,
            Err(ResticError::StorageUnreachable { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_ends_the_wait_at_once() {
        let started = Instant::now();
        let policy = RetryPolicy::new(3, Duration::from_secs(600));
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            canceller.cancel();
        });
        let (result, runs, waits) = run(policy, &cancel, vec![Err(unreachable())]).await;
        let error = result.unwrap_err();
        assert!(error.is_cancelled(), "{error:?}");
        assert_eq!((runs, waits.len()), (1, 1));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_run_is_not_retried() {
        let policy = RetryPolicy::new(3, Duration::from_secs(2));
        let cancel = CancellationToken::new();
        let cancelled = ResticError::Cancelled {
            command: "backup".into(),
        };
        let (result, runs, _) =
            run(policy, &cancel, vec![Err(unreachable()), Err(cancelled)]).await;
        assert!(matches!(result, Err(ResticError::Cancelled { .. })));
        assert_eq!(runs, 2);
    }
}
