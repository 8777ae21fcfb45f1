//! Which repositories this process has itself verified lately (opened with the current key,
//! stale restic locks cleared), so that EnsureRepository can answer from memory instead of
//! running restic before every backup and restore. Never persisted: a restarted repo-manager
//! verifies each namespace again on its first call, clearing what a killed run left behind.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

#[derive(Debug, Default)]
struct Entry {
    verified_at: Option<Instant>,
    /// Bumped by every invalidation, so a verification that was under way while something
    /// invalidated the namespace is not recorded when it ends.
    generation: u64,
}

/// A verification under way, from [`Verifications::begin`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    started: Instant,
    generation: u64,
}

#[derive(Debug)]
pub struct Verifications {
    /// Zero: nothing is ever fresh, every call verifies.
    interval: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Verifications {
    pub fn new(interval: Duration) -> Verifications {
        Verifications {
            interval,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the namespace was verified less than the interval before `now`.
    pub fn is_fresh(&self, namespace: &str, now: Instant) -> bool {
        if self.interval.is_zero() {
            return false;
        }
        self.entries()
            .get(namespace)
            .and_then(|entry| entry.verified_at)
            .is_some_and(|at| now.saturating_duration_since(at) < self.interval)
    }

    /// Starts a verification at `now`; the old one no longer counts while it runs.
    pub fn begin(&self, namespace: &str, now: Instant) -> Ticket {
        let mut entries = self.entries();
        let entry = entries.entry(namespace.to_string()).or_default();
        entry.verified_at = None;
        Ticket {
            started: now,
            generation: entry.generation,
        }
    }

    /// Records a verification that succeeded, dated from its start (what it saw may have
    /// changed since), unless the namespace was invalidated while it ran.
    pub fn succeeded(&self, namespace: &str, ticket: Ticket) {
        if self.interval.is_zero() {
            return;
        }
        let mut entries = self.entries();
        if let Some(entry) = entries.get_mut(namespace)
            && entry.generation == ticket.generation
        {
            entry.verified_at = Some(ticket.started);
        }
    }

    /// Something may have changed what the last verification vouched for (a key, a lock
    /// left by a failed restic): the next ensure verifies again.
    pub fn invalidate(&self, namespace: &str) {
        let mut entries = self.entries();
        let entry = entries.entry(namespace.to_string()).or_default();
        entry.verified_at = None;
        entry.generation += 1;
    }
}

/// Invalidates the namespace when dropped before [`InvalidateOnDrop::disarm`]: a restic run
/// whose caller went away mid-run (an abandoned RPC) is killed and may leave its lock.
pub struct InvalidateOnDrop<'a> {
    verifications: &'a Verifications,
    namespace: &'a str,
    armed: bool,
}

impl<'a> InvalidateOnDrop<'a> {
    pub fn new(verifications: &'a Verifications, namespace: &'a str) -> InvalidateOnDrop<'a> {
        InvalidateOnDrop {
            verifications,
            namespace,
            armed: true,
        }
    }

    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for InvalidateOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.verifications.invalidate(self.namespace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(300);

    #[test]
    fn a_namespace_never_verified_is_not_fresh() {
        let verifications = Verifications::new(INTERVAL);
        assert!(!verifications.is_fresh("ns", Instant::now()));
    }

    #[test]
    fn a_verification_is_fresh_for_the_interval_from_its_start() {
        let verifications = Verifications::new(INTERVAL);
        let start = Instant::now();
        let ticket = verifications.begin("ns", start);
        verifications.succeeded("ns", ticket);
        assert!(verifications.is_fresh("ns", start));
        assert!(verifications.is_fresh("ns", start + INTERVAL - Duration::from_secs(1)));
        assert!(!verifications.is_fresh("ns", start + INTERVAL));
        assert!(!verifications.is_fresh("other", start));
    }

    #[test]
    fn zero_interval_never_answers_from_memory() {
        let verifications = Verifications::new(Duration::ZERO);
        let start = Instant::now();
        let ticket = verifications.begin("ns", start);
        verifications.succeeded("ns", ticket);
        assert!(!verifications.is_fresh("ns", start));
    }

    #[test]
    fn invalidation_ends_freshness() {
        let verifications = Verifications::new(INTERVAL);
        let start = Instant::now();
        let ticket = verifications.begin("ns", start);
        verifications.succeeded("ns", ticket);
        verifications.invalidate("ns");
        assert!(!verifications.is_fresh("ns", start));
    }

    #[test]
    fn invalidation_during_a_verification_keeps_it_from_counting() {
        let verifications = Verifications::new(INTERVAL);
        let start = Instant::now();
        let ticket = verifications.begin("ns", start);
        verifications.invalidate("ns");
        verifications.succeeded("ns", ticket);
        assert!(!verifications.is_fresh("ns", start));
        let again = verifications.begin("ns", start);
        verifications.succeeded("ns", again);
        assert!(verifications.is_fresh("ns", start));
    }

    #[test]
    fn a_new_verification_replaces_the_old_one_only_when_it_succeeds() {
        let verifications = Verifications::new(INTERVAL);
        let start = Instant::now();
        let ticket = verifications.begin("ns", start);
        verifications.succeeded("ns", ticket);
        verifications.begin("ns", start + Duration::from_secs(1));
        assert!(!verifications.is_fresh("ns", start + Duration::from_secs(1)));
    }

    #[test]
    fn a_run_that_ends_without_disarming_invalidates() {
        let verifications = Verifications::new(INTERVAL);
        let start = Instant::now();
        let ticket = verifications.begin("ns", start);
        verifications.succeeded("ns", ticket);
        InvalidateOnDrop::new(&verifications, "ns").disarm();
        assert!(verifications.is_fresh("ns", start));
        drop(InvalidateOnDrop::new(&verifications, "ns"));
        assert!(!verifications.is_fresh("ns", start));
    }
}
