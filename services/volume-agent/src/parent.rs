//! Which snapshot a backup is compared against (`restic backup --parent`). The request names
//! it (the orchestrator's record of the identity's last completed snapshot), so a backup is one
//! restic process. Only when the request names none, or restic says the named one does not
//! exist (forgotten or pruned since), is it looked up with `restic snapshots` by the identity
//! tag, as restic's own lookup would; the reason goes to the log and into the result.

use std::fmt;

use stowage_restic::{ResticError, backup::is_missing_parent};

/// Why the parent was looked up instead of taken from the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The request named no parent (a first backup, or a caller that keeps no record).
    NotGiven,
    /// restic said the request's parent does not exist in the repository.
    Missing {
        parent: String,
        /// restic's words, its last line.
        restic: String,
    },
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fallback::NotGiven => write!(f, "the request named no parent snapshot"),
            Fallback::Missing { parent, restic } => write!(
                f,
                "parent snapshot {parent} does not exist in the repository (forgotten or \
                 pruned): {restic}"
            ),
        }
    }
}

/// What the backup does after a `restic backup` failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Look the parent up with `restic snapshots`, then run the backup again.
    LookUp,
    /// The looked-up parent is gone too (a forget ran in between): back up without a parent.
    WithoutParent,
    /// Not about the parent: the failure goes to the retry policy.
    Fail,
}

/// The parent of one backup, as it changes while the backup runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentChoice {
    parent: Option<String>,
    fallback: Option<Fallback>,
    looked_up: bool,
}

impl ParentChoice {
    /// Starts from the request's parent (`None` for none).
    pub fn given(parent: Option<String>) -> ParentChoice {
        let fallback = parent.is_none().then_some(Fallback::NotGiven);
        ParentChoice {
            parent,
            fallback,
            looked_up: false,
        }
    }

    /// The `--parent` of the next `restic backup`.
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }

    /// Why the parent is not the request's; `None` while it is.
    pub fn fallback(&self) -> Option<&Fallback> {
        self.fallback.as_ref()
    }

    /// Whether `restic snapshots` must run before the first `restic backup`.
    pub fn needs_lookup(&self) -> bool {
        self.parent.is_none() && !self.looked_up
    }

    /// Takes the result of `restic snapshots`: the identity's latest snapshot, if any.
    pub fn looked_up(&mut self, found: Option<String>) {
        self.parent = found;
        self.looked_up = true;
    }

    /// Decides after `restic backup` with [`Self::parent`] failed with `error`.
    pub fn after_failure(&mut self, error: &ResticError) -> Next {
        let Some(parent) = self.parent.clone() else {
            return Next::Fail;
        };
        if !is_missing_parent(error, &parent) {
            return Next::Fail;
        }
        if self.looked_up {
            self.parent = None;
            return Next::WithoutParent;
        }
        let restic = error
            .stderr()
            .and_then(|stderr| stderr.lines().rev().find(|line| !line.trim().is_empty()))
            .unwrap_or_default()
            .trim()
            .to_string();
        self.fallback = Some(Fallback::Missing { parent, restic });
        Next::LookUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIVEN: &str = "d8ab32ffeaf87a2edbf959469dee2558921f7ba423b91d22ae5e8be10c7709a7";

    fn missing(parent: &str) -> ResticError {
        ResticError::Failed {
            command: "backup".into(),
            code: 1,
            stderr: format!(
                "{{\"message_type\":\"exit_error\",\"code\":1,\"message\":\"failed to load snapshot {}: The specified key does not exist.\"}}",
                &parent[..8]
            ),
        }
    }

    fn locked() -> ResticError {
        ResticError::Locked {
            command: "backup".into(),
            repository: "/r".into(),
            stderr: "repository is already locked".into(),
        }
    }

    #[test]
    fn a_given_parent_is_used_without_a_lookup() {
        let choice = ParentChoice::given(Some(GIVEN.into()));
        assert!(!choice.needs_lookup());
        assert_eq!(choice.parent(), Some(GIVEN));
        assert_eq!(choice.fallback(), None);
    }

    #[test]
    fn no_parent_given_is_looked_up_first_and_says_why() {
        let mut choice = ParentChoice::given(None);
        assert!(choice.needs_lookup());
        assert_eq!(choice.fallback(), Some(&Fallback::NotGiven));
        choice.looked_up(Some("0badc0de".into()));
        assert!(!choice.needs_lookup());
        assert_eq!(choice.parent(), Some("0badc0de"));
        // Nothing found: a first backup, run once without a parent, no second lookup.
        let mut first = ParentChoice::given(None);
        first.looked_up(None);
        assert!(!first.needs_lookup());
        assert_eq!(first.parent(), None);
        assert_eq!(first.after_failure(&missing(GIVEN)), Next::Fail);
    }

    #[test]
    fn a_forgotten_parent_is_looked_up_once_naming_it_and_restics_words() {
        let mut choice = ParentChoice::given(Some(GIVEN.into()));
        assert_eq!(choice.after_failure(&missing(GIVEN)), Next::LookUp);
        match choice.fallback() {
            Some(Fallback::Missing { parent, restic }) => {
                assert_eq!(parent, GIVEN);
                assert!(restic.contains("does not exist"), "{restic}");
            }
            other => panic!("{other:?}"),
        }
        let reason = choice.fallback().unwrap().to_string();
        assert!(
            reason.contains(GIVEN) && reason.contains("forgotten"),
            "{reason}"
        );
        choice.looked_up(Some("0badc0de".into()));
        assert_eq!(choice.parent(), Some("0badc0de"));
        // The looked-up parent vanished too: no endless lookups, a full backup.
        assert_eq!(
            choice.after_failure(&missing("0badc0de")),
            Next::WithoutParent
        );
        assert_eq!(choice.parent(), None);
        assert_eq!(choice.after_failure(&missing(GIVEN)), Next::Fail);
        // The first reason stays: it is why the request's parent was not used.
        assert!(matches!(choice.fallback(), Some(Fallback::Missing { .. })));
    }

    #[test]
    fn other_failures_go_to_the_retry_policy() {
        let mut choice = ParentChoice::given(Some(GIVEN.into()));
        assert_eq!(choice.after_failure(&locked()), Next::Fail);
        // Another snapshot's disappearance is not this parent's.
        assert_eq!(choice.after_failure(&missing("0badc0de")), Next::Fail);
        assert_eq!(choice.parent(), Some(GIVEN));
        assert_eq!(choice.fallback(), None);
    }
}
