//! Which restic locks belong to stowage pods that no longer exist. restic writes its host name
//! into every lock, and in a pod that is the pod's name. restic itself judges a lock of
//! another host stale only after 30 minutes without refresh, so a repo-manager killed
//! mid-prune and rescheduled under a new pod name would block every backup of the namespace
//! that long. A lock whose host name is a pod of a stowage workload (the repo-manager's
//! Deployment, the agents' DaemonSet) that the API server no longer has, or that has ended,
//! is stale at once. Locks of any other host are left to restic's rule.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use stowage_restic::Lock;

/// Whether a pod of stowage's namespace is there and may still run restic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPresence {
    /// It exists and has not ended: its restic may still hold the lock.
    Present,
    /// Not in the API server, or `Succeeded`/`Failed` (an evicted pod stays listed with
    /// nothing running in it).
    Gone,
}

/// Asks the API server about one pod by name; the unit tests use an in-memory fake.
pub trait PodDirectory: Send + Sync {
    fn presence<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PodPresence, kube::Error>>;
}

/// The pods of stowage's namespace in the Kubernetes API.
pub struct KubePods {
    api: Api<Pod>,
}

impl KubePods {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        KubePods {
            api: Api::namespaced(client, namespace),
        }
    }
}

impl PodDirectory for KubePods {
    fn presence<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PodPresence, kube::Error>> {
        Box::pin(async move {
            let pod = self.api.get_opt(name).await?;
            let ended = |pod: &Pod| {
                matches!(
                    pod.status
                        .as_ref()
                        .and_then(|status| status.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            };
            Ok(match pod {
                Some(pod) if !ended(&pod) => PodPresence::Present,
                _ => PodPresence::Gone,
            })
        })
    }
}

/// Judges restic locks by whether the stowage pod named as their host is gone.
pub struct LockHolders {
    pods: Box<dyn PodDirectory>,
    /// Names of the stowage workloads whose pods run restic (`stowage-repo-manager`,
    /// `stowage-volume-agent`).
    workloads: Vec<String>,
}

impl LockHolders {
    pub fn new(pods: Box<dyn PodDirectory>, workloads: Vec<String>) -> Self {
        LockHolders { pods, workloads }
    }

    /// Whether `hostname` is named as a pod of one of the workloads is: `<workload>-<5>` (a
    /// DaemonSet's pod) or `<workload>-<template hash>-<5>` (a Deployment's), the suffixes
    /// lowercase letters and digits. Anything else (a restore helper running in an
    /// application's pod, a workstation) is not stowage's to judge.
    pub fn is_stowage_pod_name(&self, hostname: &str) -> bool {
        let alphanumeric = |part: &str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        self.workloads.iter().any(|workload| {
            let Some(suffix) = hostname
                .strip_prefix(workload.as_str())
                .and_then(|rest| rest.strip_prefix('-'))
            else {
                return false;
            };
            let parts: Vec<&str> = suffix.split('-').collect();
            matches!(parts.len(), 1 | 2)
                && parts.iter().all(|part| alphanumeric(part))
                && parts.last().is_some_and(|random| random.len() == 5)
        })
    }

    /// Ids of the `locks` held by stowage pods that are gone. Locks written on `this_host` are
    /// not judged here (their pid tells whether their holder is alive). Each host is asked
    /// about once; a failed question keeps that host's locks (a lock is only ever removed on
    /// the API server's word).
    pub async fn locks_of_gone_pods(&self, locks: &[Lock], this_host: &str) -> Vec<String> {
        let hosts: BTreeSet<&str> = locks
            .iter()
            .map(|lock| lock.info.hostname.as_str())
            .filter(|host| *host != this_host && self.is_stowage_pod_name(host))
            .collect();
        let mut presence = BTreeMap::new();
        for host in hosts {
            match self.pods.presence(host).await {
                Ok(found) => {
                    presence.insert(host, found);
                }
                Err(error) => tracing::warn!(
                    pod = host,
                    %error,
                    "cannot ask the API server whether the pod holding a restic lock exists; \
                     its lock is left to restic's rule"
                ),
            }
        }
        locks
            .iter()
            .filter(|lock| presence.get(lock.info.hostname.as_str()) == Some(&PodPresence::Gone))
            .map(|lock| lock.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use stowage_restic::LockInfo;

    use super::*;

    /// Pods by name; a name in `failing` makes the question fail. Counts the questions.
    #[derive(Default)]
    struct FakePods {
        pods: BTreeMap<String, PodPresence>,
        failing: BTreeSet<String>,
        asked: Arc<Mutex<Vec<String>>>,
    }

    impl PodDirectory for FakePods {
        fn presence<'a>(
            &'a self,
            name: &'a str,
        ) -> BoxFuture<'a, Result<PodPresence, kube::Error>> {
            Box::pin(async move {
                self.asked.lock().unwrap().push(name.to_string());
                if self.failing.contains(name) {
                    return Err(kube::Error::LinesCodecMaxLineLengthExceeded);
                }
                Ok(self.pods.get(name).copied().unwrap_or(PodPresence::Gone))
            })
        }
    }

    fn lock(id: &str, host: &str) -> Lock {
        Lock {
            id: id.into(),
            info: LockInfo {
                // Seconds old: no age rule would call it stale.
                time: chrono::Utc::now().fixed_offset(),
                exclusive: true,
                hostname: host.into(),
                username: "root".into(),
                pid: 7,
            },
        }
    }

    /// The holders judged with `pods`, and the list of questions the fake was asked.
    fn holders(pods: FakePods) -> (LockHolders, Arc<Mutex<Vec<String>>>) {
        let asked = pods.asked.clone();
        (
            LockHolders::new(
                Box::new(pods),
                vec!["stowage-repo-manager".into(), "stowage-volume-agent".into()],
            ),
            asked,
        )
    }

    #[test]
    fn only_names_of_stowage_workload_pods_are_judged() {
        let (holders, _) = holders(FakePods::default());
        for name in [
            "stowage-repo-manager-5d8f7b9c4d-x7k2p",
            "stowage-volume-agent-x7k2p",
        ] {
            assert!(holders.is_stowage_pod_name(name), "{name}");
        }
        for name in [
            "stowage-repo-manager",
            "stowage-volume-agent-",
            "stowage-volume-agent-toolong",
            "stowage-volume-agent-a-b-c2d4f",
            "stowage-volume-agent-X7K2P",
            "stowage-orchestrator-5d8f7b9c4d-x7k2p",
            "sample",
            "build-host.example.com",
        ] {
            assert!(!holders.is_stowage_pod_name(name), "{name}");
        }
    }

    #[tokio::test]
    async fn a_gone_stowage_pod_s_locks_are_stale_at_once_and_a_present_one_s_are_kept() {
        let (holders, asked) = holders(FakePods {
            pods: BTreeMap::from([
                ("stowage-volume-agent-live1".into(), PodPresence::Present),
                (
                    "stowage-repo-manager-5d8f7b9c4d-ended".into(),
                    PodPresence::Gone,
                ),
            ]),
            ..Default::default()
        });
        let locks = [
            lock("a1", "stowage-repo-manager-5d8f7b9c4d-gone1"),
            lock("a2", "stowage-repo-manager-5d8f7b9c4d-gone1"),
            lock("b1", "stowage-volume-agent-live1"),
            lock("c1", "stowage-repo-manager-5d8f7b9c4d-ended"),
            lock("d1", "workstation"),
            lock("e1", "stowage-repo-manager-77f9c-here1"),
        ];
        let gone = holders
            .locks_of_gone_pods(&locks, "stowage-repo-manager-77f9c-here1")
            .await;
        assert_eq!(gone, ["a1", "a2", "c1"]);
        // One question per host; neither this host nor a non-stowage host is asked about.
        let asked = asked.lock().unwrap().clone();
        assert_eq!(
            asked,
            [
                "stowage-repo-manager-5d8f7b9c4d-ended",
                "stowage-repo-manager-5d8f7b9c4d-gone1",
                "stowage-volume-agent-live1",
            ]
        );
    }

    #[tokio::test]
    async fn a_lock_is_kept_when_the_api_server_cannot_be_asked() {
        let (holders, _) = holders(FakePods {
            failing: BTreeSet::from(["stowage-volume-agent-gone1".to_string()]),
            ..Default::default()
        });
        let locks = [
            lock("a1", "stowage-volume-agent-gone1"),
            lock("b1", "stowage-volume-agent-gone2"),
        ];
        assert_eq!(holders.locks_of_gone_pods(&locks, "here").await, ["b1"]);
    }
}
