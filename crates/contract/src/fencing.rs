//! The fencing rule the orchestrator, the repo-manager and the agents share: each leader term
//! has a number (the Lease's `leaseTransitions` when the leader took it), every request a
//! leader sends carries it in the `stowage-leader-term` metadata header, and a server refuses a
//! request whose term is older than the newest it has seen. So a leader that was paused through
//! a takeover and wakes up still believing it leads cannot start restic, re-attach or cancel
//! once its successor has spoken to the same server.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

/// The gRPC metadata key carrying the sender's leader term (a decimal number).
pub const LEADER_TERM_HEADER: &str = "stowage-leader-term";

/// Why a request was refused by [`TermFence::admit`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    #[error(
        "the request's leader term {sent} is older than term {newest} this server has seen: \
         another replica leads now"
    )]
    Stale { sent: u64, newest: u64 },
    #[error("the `{LEADER_TERM_HEADER}` header `{0}` is not a decimal number")]
    Malformed(String),
}

/// The newest leader term a server has seen. Requests without a term (a single-replica
/// orchestrator, a test client) are admitted and change nothing.
#[derive(Debug, Default)]
pub struct TermFence {
    newest: AtomicU64,
}

impl TermFence {
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits a request carrying `header` (the header's value, `None` when absent): refused
    /// when its term is older than the newest seen, which otherwise becomes the newest.
    pub fn admit(&self, header: Option<&str>) -> Result<Option<u64>, FenceError> {
        let Some(text) = header else {
            return Ok(None);
        };
        let sent: u64 = text
            .trim()
            .parse()
            .map_err(|_| FenceError::Malformed(text.to_string()))?;
        // fetch_max makes check and update one step: two leaders racing cannot both pass with
        // the older term after the newer one was recorded.
        let before = self.newest.fetch_max(sent, Ordering::SeqCst);
        if sent < before {
            return Err(FenceError::Stale {
                sent,
                newest: before,
            });
        }
        Ok(Some(sent))
    }

    /// The newest term seen (0 before any).
    pub fn newest(&self) -> u64 {
        self.newest.load(Ordering::SeqCst)
    }
}

/// The term a leader sends, and until when it may act on it: set by the election each time
/// the lease is renewed, shared by the process's clients and writers.
#[derive(Debug, Clone, Default)]
pub struct LeaderTerm(Arc<TermState>);

#[derive(Debug, Default)]
struct TermState {
    term: AtomicU64,
    /// Until when the lease is surely still ours (the last renewal plus the renew deadline,
    /// on the monotonic clock, which keeps running while the process is stopped); `None`
    /// once lost. Unused before the first term.
    valid_until: Mutex<Option<Instant>>,
}

impl LeaderTerm {
    /// Records a renewal: this process leads in `term` (the Lease's `leaseTransitions` when it
    /// took it; 0 is not a term) until `valid_until` at least.
    pub fn renewed(&self, term: u64, valid_until: Instant) {
        self.0.term.store(term, Ordering::SeqCst);
        *self.lock() = Some(valid_until);
    }

    /// The lease was lost or given up: nothing more is written in this term.
    pub fn lost(&self) {
        *self.lock() = None;
    }

    /// The term to send; `None` before this process led (a single replica sends none).
    pub fn get(&self) -> Option<u64> {
        Some(self.0.term.load(Ordering::SeqCst)).filter(|term| *term > 0)
    }

    /// Whether this process may write now: always without leader election (no term was ever
    /// set), else only while the last renewal is fresh. A leader that was stopped (SIGSTOP)
    /// past its renew deadline wakes up holding nothing, before its election loop notices.
    pub fn holds(&self, now: Instant) -> bool {
        self.get().is_none() || self.lock().is_some_and(|until| now < until)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.0.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_term_is_refused_once_a_newer_one_was_seen() {
        let fence = TermFence::new();
        assert_eq!(fence.admit(None), Ok(None));
        assert_eq!(fence.admit(Some("3")), Ok(Some(3)));
        assert_eq!(fence.admit(Some("3")), Ok(Some(3)), "the same term again");
        assert_eq!(fence.admit(Some("4")), Ok(Some(4)));
        let refused = fence.admit(Some("3")).unwrap_err();
        assert_eq!(refused, FenceError::Stale { sent: 3, newest: 4 });
        assert!(refused.to_string().contains("term 3"), "{refused}");
        assert_eq!(fence.newest(), 4, "a refused term changes nothing");
        assert_eq!(fence.admit(None), Ok(None), "no header: admitted");
    }

    #[test]
    fn a_term_is_sent_once_set_and_holds_only_while_fresh() {
        let term = LeaderTerm::default();
        let shared = term.clone();
        let now = Instant::now();
        assert_eq!(shared.get(), None);
        assert!(shared.holds(now), "no election: always writes");
        term.renewed(7, now + std::time::Duration::from_secs(10));
        assert_eq!(shared.get(), Some(7));
        assert!(shared.holds(now + std::time::Duration::from_secs(9)));
        assert!(
            !shared.holds(now + std::time::Duration::from_secs(11)),
            "woken up after the renew deadline: holds nothing"
        );
        term.lost();
        assert!(!shared.holds(now), "lost");
        assert_eq!(
            shared.get(),
            Some(7),
            "still sent, so servers can refuse it"
        );
    }

    #[test]
    fn a_malformed_term_is_refused_naming_it() {
        let fence = TermFence::new();
        let error = fence.admit(Some("three")).unwrap_err();
        assert!(error.to_string().contains("`three`"), "{error}");
    }
}
