//! Leader election for the services that must run once per cluster (the orchestrator and the
//! repo-manager): which replica leads is decided through a `coordination.k8s.io/v1` Lease in
//! stowage's namespace, by `kube-lease-manager`; this crate adds what that crate leaves to its
//! callers: the flags (client-go's names and defaults), a renew deadline after which a leader
//! that could not renew stops on its own, a [`Leadership`] handle (a watch of the role and a
//! token that fires when leadership is lost), the [`gate`] that keeps a standby's API
//! answering Unavailable and its service's health NOT_SERVING, and the leader label on the
//! replica's own Pod ([`PodLabel`]) that routes the Service to the leader.
//!
//! The timing argument, with the defaults (lease duration D = 15 s, renew deadline R = 10 s,
//! retry period P = 2 s): the leader renews every P, writing `renewTime` (its wall clock) just
//! before the request leaves. A candidate takes the Lease only once its wall clock is past
//! `renewTime + D`. The leader counts R from the moment its last successful renewal was sent,
//! on its monotonic clock, and when R passes without another it cancels [`Leadership::lost`]
//! (the services then exit at once). So the old leader has stopped at `renewTime + R` (plus
//! the time to notice, which is immediate: a timer is armed for that instant), before any
//! candidate may take over at `renewTime + D`, as long as the clocks of the two nodes differ by
//! less than D − R = 5 s. A process that is paused (SIGSTOP, a frozen VM) runs no timer while
//! paused: what it may still do when it wakes is the fencing rule's business
//! (docs/high-availability.md).

mod election;
mod gate;
mod pod_label;
mod service;
mod write_fence;

use std::time::Duration;

pub use election::Elector;
pub use gate::{Gate, Opener, gate};
pub use pod_label::{LEADER_LABEL, PodLabel};
pub use service::Election;
use stowage_contract::fencing::LeaderTerm;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
pub use write_fence::{WriteFence, WriteFenceLayer, WriteRefused, fenced_client};

/// The exit code of a service that lost its leadership: Kubernetes restarts it as a standby.
pub const LOST_LEADERSHIP_EXIT_CODE: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "--leader-elect needs this replica's identity: set POD_NAME (the downward API's \
         metadata.name) or --leader-elect-identity"
    )]
    NoIdentity,
    #[error("--leader-elect-{flag}-seconds must be at least 1, not 0")]
    ZeroDuration { flag: &'static str },
    #[error(
        "--leader-elect-lease-duration-seconds ({lease_duration}) must be greater than \
         --leader-elect-renew-deadline-seconds ({renew_deadline}): a leader must give up before \
         another may take the Lease"
    )]
    DeadlineNotBeforeExpiry {
        lease_duration: u64,
        renew_deadline: u64,
    },
    #[error(
        "--leader-elect-renew-deadline-seconds ({renew_deadline}) must be more than 1.2 times \
         --leader-elect-retry-period-seconds ({retry_period}): a leader must be able to retry a \
         failed renewal before its deadline"
    )]
    RetryNotBeforeDeadline {
        renew_deadline: u64,
        retry_period: u64,
    },
    #[error("the Kubernetes API for leader election (in-cluster config or KUBECONFIG): {0}")]
    Config(String),
    #[error("the Kubernetes client for leader election: {0}")]
    Client(#[source] kube::Error),
    #[error("Lease {lease}: {source}")]
    Lease {
        lease: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("the election task of Lease {lease} ended: {reason}")]
    Ended { lease: String, reason: String },
}

/// Leader election flags, as client-go's (`--leader-elect…`), every one also an environment
/// variable. Field names are unique among the services' own flags (clap ids).
#[derive(Debug, Clone, clap::Args)]
pub struct ElectionArgs {
    /// Elect a leader among this service's replicas through a coordination.k8s.io/v1 Lease;
    /// only the leader works, the others stand by (ready, but not labelled for the Service:
    /// `POD_NAME` and `POD_NAMESPACE` name the Pod the leader labels). Off: this process leads
    /// alone, as a single replica must (the shipped manifests turn it on).
    #[arg(
        long = "leader-elect",
        env = "STOWAGE_LEADER_ELECT",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub leader_elect: bool,
    /// How long a Lease stays the leader's after its last renewal: a standby takes over this
    /// long after the leader stopped renewing.
    #[arg(
        long = "leader-elect-lease-duration-seconds",
        env = "STOWAGE_LEADER_ELECT_LEASE_DURATION_SECONDS",
        default_value_t = 15
    )]
    pub lease_duration_seconds: u64,
    /// A leader that has not renewed its Lease for this long stops working (and exits); less
    /// than the lease duration, so it stops before another replica may lead.
    #[arg(
        long = "leader-elect-renew-deadline-seconds",
        env = "STOWAGE_LEADER_ELECT_RENEW_DEADLINE_SECONDS",
        default_value_t = 10
    )]
    pub renew_deadline_seconds: u64,
    /// How often the leader renews the Lease (and a standby looks at who holds it).
    #[arg(
        long = "leader-elect-retry-period-seconds",
        env = "STOWAGE_LEADER_ELECT_RETRY_PERIOD_SECONDS",
        default_value_t = 2
    )]
    pub retry_period_seconds: u64,
    /// Name of the Lease; by default the service's name (`stowage-orchestrator`,
    /// `stowage-repo-manager`).
    #[arg(
        long = "leader-elect-lease-name",
        env = "STOWAGE_LEADER_ELECT_LEASE_NAME"
    )]
    pub lease_name: Option<String>,
    /// Namespace of the Lease; by default the namespace stowage runs in.
    #[arg(long = "leader-elect-namespace", env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's name in the Lease (`holderIdentity`): its pod name, unique among the
    /// replicas.
    #[arg(long = "leader-elect-identity", env = "POD_NAME")]
    pub leader_identity: Option<String>,
}

/// What an election needs, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Settings {
    /// `ns/name` of the Lease, as messages name it.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.lease_name)
    }
}

impl ElectionArgs {
    /// The election's settings, or None when election is off; `default_lease_name` and
    /// `default_namespace` are the service's name and namespace.
    pub fn settings(
        &self,
        default_lease_name: &str,
        default_namespace: &str,
    ) -> Result<Option<Settings>, LeaderError> {
        if !self.leader_elect {
            return Ok(None);
        }
        let identity = self
            .leader_identity
            .as_deref()
            .map(str::trim)
            .filter(|identity| !identity.is_empty())
            .ok_or(LeaderError::NoIdentity)?;
        for (flag, value) in [
            ("lease-duration", self.lease_duration_seconds),
            ("renew-deadline", self.renew_deadline_seconds),
            ("retry-period", self.retry_period_seconds),
        ] {
            if value == 0 {
                return Err(LeaderError::ZeroDuration { flag });
            }
        }
        if self.lease_duration_seconds <= self.renew_deadline_seconds {
            return Err(LeaderError::DeadlineNotBeforeExpiry {
                lease_duration: self.lease_duration_seconds,
                renew_deadline: self.renew_deadline_seconds,
            });
        }
        // client-go's rule (RenewDeadline > JitterFactor × RetryPeriod, JitterFactor 1.2).
        if self.renew_deadline_seconds * 10 <= self.retry_period_seconds * 12 {
            return Err(LeaderError::RetryNotBeforeDeadline {
                renew_deadline: self.renew_deadline_seconds,
                retry_period: self.retry_period_seconds,
            });
        }
        let non_empty = |value: &Option<String>, default: &str| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .unwrap_or(default)
                .to_string()
        };
        Ok(Some(Settings {
            lease_name: non_empty(&self.lease_name, default_lease_name),
            namespace: non_empty(&self.lease_namespace, default_namespace),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(self.lease_duration_seconds),
            renew_deadline: Duration::from_secs(self.renew_deadline_seconds),
            retry_period: Duration::from_secs(self.retry_period_seconds),
        }))
    }
}

/// Ends the process at once after its leadership was lost. Nothing more may be written:
/// another replica may lead (and recover the work in flight from the bucket) as soon as the
/// Lease expires, so no shutdown path runs and nothing is recorded; Kubernetes restarts the
/// container, which then stands by.
pub fn exit_lost(service: &str) -> ! {
    tracing::error!(
        service,
        "lost the leadership: exiting at once so that nothing more is written; the new leader \
         recovers the work in flight"
    );
    std::process::exit(LOST_LEADERSHIP_EXIT_CODE)
}

/// Where this replica stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the Lease; `leader` is its holder when one was seen.
    Standby { leader: Option<String> },
    /// Holds the Lease (or leads alone, election off).
    Leader,
    /// Held the Lease and lost it: stops for good.
    Lost,
}

/// A replica's view of the election, cheap to clone: the role, and a token that fires once
/// when leadership is lost.
#[derive(Debug, Clone)]
pub struct Leadership {
    identity: String,
    lease: Option<String>,
    role: watch::Receiver<Role>,
    lost: CancellationToken,
    term: LeaderTerm,
}

impl Leadership {
    /// A process that leads alone (election off): it leads from the start and never loses.
    pub fn sole() -> Leadership {
        let (_, role) = watch::channel(Role::Leader);
        Leadership {
            identity: String::new(),
            lease: None,
            role,
            lost: CancellationToken::new(),
            term: LeaderTerm::default(),
        }
    }

    /// The fencing rule's view of this replica's term (`stowage_contract::fencing`): the
    /// election reports the term and its end on every accepted renewal, and `lost()` when the
    /// Lease is lost or released. A process that leads alone never sets it, so its requests
    /// carry no term and its writes are not checked. Clones share it.
    pub fn term(&self) -> LeaderTerm {
        self.term.clone()
    }

    /// This replica's identity in the Lease (empty when election is off).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        !self.lost.is_cancelled() && *self.role.borrow() == Role::Leader
    }

    /// Fires once when this replica loses the leadership it held; never for a standby that
    /// never led, nor when election is off.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Waits until this replica leads (true) or `stop` fires first (false).
    pub async fn acquired(&self, stop: &CancellationToken) -> bool {
        let mut role = self.role.clone();
        tokio::select! {
            changed = role.wait_for(|role| *role == Role::Leader) => changed.is_ok(),
            () = stop.cancelled() => false,
        }
    }

    /// Why this replica does not serve a request: the answer a standby gives, naming the
    /// leader it knows of, so that a caller knows to retry (the Service routes to the replica
    /// whose Pod carries the leader label).
    pub fn unavailable(&self) -> tonic::Status {
        let Some(lease) = self.lease.as_deref() else {
            // Election off: the only reason is that the service is not built yet.
            return tonic::Status::with_metadata(
                tonic::Code::Unavailable,
                "the server is still starting",
                standby_metadata(""),
            );
        };
        let me = &self.identity;
        let message = match self.role() {
            _ if self.lost.is_cancelled() => {
                format!("not the leader; {me} lost Lease {lease} and is stopping")
            }
            Role::Standby {
                leader: Some(leader),
            } => format!("not the leader; {leader} leads (Lease {lease}), {me} stands by"),
            Role::Standby { leader: None } => {
                format!("not the leader; no replica holds Lease {lease} yet, {me} stands by")
            }
            Role::Leader => format!("{me} leads (Lease {lease}) and is still starting"),
            Role::Lost => format!("not the leader; {me} lost Lease {lease} and is stopping"),
        };
        let leader = match self.role() {
            Role::Standby {
                leader: Some(leader),
            } => leader,
            _ => String::new(),
        };
        tonic::Status::with_metadata(tonic::Code::Unavailable, message, standby_metadata(&leader))
    }
}

/// The marker of a refusal by a replica that did nothing ([`stowage_grpc::STANDBY_METADATA`]),
/// whose value names the leader when known.
fn standby_metadata(leader: &str) -> tonic::metadata::MetadataMap {
    let mut metadata = tonic::metadata::MetadataMap::new();
    let value = leader
        .parse()
        .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static(""));
    metadata.insert(stowage_grpc::STANDBY_METADATA, value);
    metadata
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ElectionArgs {
        ElectionArgs {
            leader_elect: true,
            lease_duration_seconds: 15,
            renew_deadline_seconds: 10,
            retry_period_seconds: 2,
            lease_name: None,
            lease_namespace: None,
            leader_identity: Some("orchestrator-7d9f-abcde".into()),
        }
    }

    #[test]
    fn defaults_are_client_gos_and_name_the_service() {
        let settings = args()
            .settings("stowage-orchestrator", "stowage")
            .unwrap()
            .unwrap();
        assert_eq!(settings.lease(), "stowage/stowage-orchestrator");
        assert_eq!(settings.identity, "orchestrator-7d9f-abcde");
        assert_eq!(
            (
                settings.lease_duration,
                settings.renew_deadline,
                settings.retry_period
            ),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        let off = ElectionArgs {
            leader_elect: false,
            ..args()
        };
        assert_eq!(off.settings("x", "y").unwrap(), None);
    }

    #[test]
    fn timings_that_would_let_two_lead_are_refused() {
        let refused = |change: fn(&mut ElectionArgs)| {
            let mut args = args();
            change(&mut args);
            args.settings("x", "y").unwrap_err().to_string()
        };
        assert!(
            refused(|a| a.renew_deadline_seconds = 15)
                .contains("--leader-elect-lease-duration-seconds (15) must be greater")
        );
        assert!(
            refused(|a| a.retry_period_seconds = 9)
                .contains("--leader-elect-retry-period-seconds (9)")
        );
        assert!(refused(|a| a.retry_period_seconds = 0).contains("retry-period-seconds must be"));
        assert!(refused(|a| a.leader_identity = Some(" ".into())).contains("POD_NAME"));
        assert!(refused(|a| a.leader_identity = None).contains("POD_NAME"));
    }

    #[test]
    fn a_standby_names_the_leader_in_its_answer() {
        let (sender, role) = watch::channel(Role::Standby {
            leader: Some("orchestrator-a".into()),
        });
        let leadership = Leadership {
            identity: "orchestrator-b".into(),
            lease: Some("stowage/stowage-orchestrator".into()),
            role,
            lost: CancellationToken::new(),
            term: LeaderTerm::default(),
        };
        let status = leadership.unavailable();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(
            status.message(),
            "not the leader; orchestrator-a leads (Lease stowage/stowage-orchestrator), \
             orchestrator-b stands by"
        );
        assert_eq!(
            status
                .metadata()
                .get(stowage_grpc::STANDBY_METADATA)
                .unwrap(),
            "orchestrator-a",
            "marked as a standby's refusal, which a client may retry"
        );
        assert!(!leadership.is_leader());
        sender.send_replace(Role::Leader);
        assert!(leadership.is_leader());
        leadership.lost().cancel();
        assert!(!leadership.is_leader(), "a lost token outranks the role");
        assert!(leadership.unavailable().message().contains("lost Lease"));
    }
}
