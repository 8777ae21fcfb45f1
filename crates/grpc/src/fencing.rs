//! The fencing rule's gRPC half (`stowage_contract::fencing`), written once for its senders
//! and its servers: a leader's requests carry its term in the `stowage-leader-term` header,
//! and a server refuses one whose term is older than the newest it has seen.

use stowage_contract::fencing::{LEADER_TERM_HEADER, LeaderTerm, TermFence};
use tonic::{Request, Status};

/// `message` as a request carrying `term`, once this process has led (a process without
/// leader election sends none).
pub fn with_term<T>(term: &LeaderTerm, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(term) = term.get() {
        request.metadata_mut().insert(
            LEADER_TERM_HEADER,
            tonic::metadata::MetadataValue::from(term),
        );
    }
    request
}

/// Admits `request` through `fence`: `FailedPrecondition` naming both terms when it comes
/// from a leader older than one this server has heard from.
pub fn admit<T>(fence: &TermFence, request: &Request<T>) -> Result<(), Status> {
    let header = request
        .metadata()
        .get(LEADER_TERM_HEADER)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    fence.admit(header).map(|_| ()).map_err(|error| {
        tracing::warn!(%error, "request from a stale leader refused");
        Status::failed_precondition(error.to_string())
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_request_carries_the_term_and_an_older_one_is_refused() {
        let fence = TermFence::new();
        let term = LeaderTerm::default();
        let alone = with_term(&term, ());
        assert!(alone.metadata().get(LEADER_TERM_HEADER).is_none());
        assert!(admit(&fence, &alone).is_ok(), "no term: admitted");

        term.renewed(5, Instant::now() + Duration::from_secs(10));
        assert!(admit(&fence, &with_term(&term, ())).is_ok());
        let old = LeaderTerm::default();
        old.renewed(4, Instant::now() + Duration::from_secs(10));
        let refused = admit(&fence, &with_term(&old, ())).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(
            refused.message().contains("term 4") && refused.message().contains("term 5"),
            "{}",
            refused.message()
        );
    }
}
