//! Which restic locks belong to stowage processes that are gone. restic writes its host name
//! and pid into every lock, and in a pod the host name is the pod's name. restic itself judges
//! a lock of another host stale only after 30 minutes without refresh, so a repo-manager killed
//! mid-prune and rescheduled under a new pod name, or an agent whose restic was killed, would
//! block every backup and maintenance of the namespace that long. A lock is stale at once when
//! its host name is a pod of a stowage workload (the repo-manager's Deployment, the agents'
//! DaemonSet) that the API server no longer has or that has ended; or when that pod is an agent
//! that is there and answers, and no restic with the lock's pid runs on it (or one does that
//! started after the lock was written: a reused pid). Any doubt (an unreachable agent or API
//! server, a host name the agent does not call its own) keeps the lock; locks of any other host
//! are left to restic's rule.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use stowage_proto::v1::{GetAgentInfoRequest, volume_agent_client::VolumeAgentClient};
use stowage_restic::Lock;

/// Whether a pod of stowage's namespace is there and may still run restic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPresence {
    /// It exists and has not ended: its restic may still hold the lock.
    Present(PresentPod),
    /// Not in the API server, or `Succeeded`/`Failed` (an evicted pod stays listed with
    /// nothing running in it).
    Gone,
}

/// What tells whether a present pod is an agent, and where to ask it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresentPod {
    pub labels: BTreeMap<String, String>,
    /// `status.podIP`, once the pod has one.
    pub ip: Option<String>,
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
                Some(pod) if !ended(&pod) => PodPresence::Present(PresentPod {
                    labels: pod.metadata.labels.clone().unwrap_or_default(),
                    ip: pod.status.and_then(|status| status.pod_ip),
                }),
                _ => PodPresence::Gone,
            })
        })
    }
}

/// What an agent says about its host: the host name restic sees there, and the restic
/// processes alive on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentProcesses {
    pub host_name: String,
    pub running: Vec<(u32, DateTime<Utc>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentQueryError {
    #[error("agent pod {pod} has no IP yet")]
    NoAddress { pod: String },
    #[error("agent pod {pod} at {url}: {source}")]
    Connect {
        pod: String,
        url: String,
        source: stowage_grpc::GrpcError,
    },
    #[error("agent pod {pod} at {url}: GetAgentInfo: {status}")]
    Call {
        pod: String,
        url: String,
        status: tonic::Status,
    },
    #[error("agent pod {pod} at {url} did not answer GetAgentInfo within {seconds}s")]
    Timeout {
        pod: String,
        url: String,
        seconds: u64,
    },
}

/// Asks the agent of a pod which restic processes run on its host; the unit tests use an
/// in-memory fake.
pub trait AgentDirectory: Send + Sync {
    fn running_restic<'a>(
        &'a self,
        pod: &'a str,
        ip: &'a str,
    ) -> BoxFuture<'a, Result<AgentProcesses, AgentQueryError>>;
}

/// Agents reached by gRPC at their pod IP and port (the orchestrator's way too), with the
/// client TLS this process installed.
pub struct GrpcAgents {
    pub port: u16,
    /// How long one agent may take to connect and answer; an agent that does not answer in
    /// time keeps its locks.
    pub timeout: std::time::Duration,
}

impl AgentDirectory for GrpcAgents {
    fn running_restic<'a>(
        &'a self,
        pod: &'a str,
        ip: &'a str,
    ) -> BoxFuture<'a, Result<AgentProcesses, AgentQueryError>> {
        Box::pin(async move {
            let host = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
                _ => ip.to_string(),
            };
            let url = format!("http://{host}:{}", self.port);
            let ask = async {
                let channel = stowage_grpc::connect(&url).await.map_err(|source| {
                    AgentQueryError::Connect {
                        pod: pod.to_string(),
                        url: url.clone(),
                        source,
                    }
                })?;
                VolumeAgentClient::new(channel)
                    .get_agent_info(GetAgentInfoRequest {})
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|status| AgentQueryError::Call {
                        pod: pod.to_string(),
                        url: url.clone(),
                        status,
                    })
            };
            let info = tokio::time::timeout(self.timeout, ask)
                .await
                .map_err(|_| AgentQueryError::Timeout {
                    pod: pod.to_string(),
                    url: url.clone(),
                    seconds: self.timeout.as_secs(),
                })??;
            Ok(AgentProcesses {
                host_name: info.host_name,
                running: info
                    .running_restic
                    .into_iter()
                    .filter_map(|process| {
                        let started = process.started?;
                        let started = DateTime::from_timestamp(
                            started.seconds,
                            u32::try_from(started.nanos).unwrap_or(0),
                        )?;
                        Some((process.pid, started))
                    })
                    .collect(),
            })
        })
    }
}

/// Why a lock is removed at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleReason {
    /// The pod named as its host is not in the API server or has ended.
    PodGone,
    /// The pod is an agent that is there, and no restic with the lock's pid runs on it.
    ResticGone,
    /// A restic with the lock's pid runs on the agent, but it started after the lock was
    /// written: the pid was reused.
    PidReused { started: DateTime<Utc> },
}

impl std::fmt::Display for StaleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StaleReason::PodGone => f.write_str("its pod no longer exists"),
            StaleReason::ResticGone => {
                f.write_str("its pod's agent runs no restic with that pid (the restic was killed)")
            }
            StaleReason::PidReused { started } => write!(
                f,
                "the restic with that pid on its pod's agent started at {started}, after the                  lock was written (the pid was reused)"
            ),
        }
    }
}

/// A lock to remove, with what the log says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleLock {
    pub id: String,
    /// The lock's host name (a pod's name).
    pub holder: String,
    pub pid: i64,
    pub reason: StaleReason,
}

/// How far a start time read from `/proc` (boot time in whole seconds plus clock ticks) may
/// be off; a process is taken to have started after a lock only beyond this.
const START_TIME_SLACK: chrono::Duration = chrono::Duration::seconds(2);

/// Judges a lock of pod `lock.hostname` by what its agent says: stale when no restic with its
/// pid runs there, or the one that does started after the lock was written. restic writes its
/// lock after it starts and refreshes it with a newer time, so its own process always started
/// before the lock's time. An agent that names another host is not the lock's host (a host
/// network pod, say): its process table says nothing about the lock.
pub fn judge_by_agent(lock: &Lock, agent: &AgentProcesses) -> Option<StaleReason> {
    if agent.host_name != lock.info.hostname {
        return None;
    }
    let pid = u32::try_from(lock.info.pid).ok().filter(|pid| *pid > 0)?;
    let created = lock.info.time.with_timezone(&Utc);
    match agent.running.iter().find(|(running, _)| *running == pid) {
        None => Some(StaleReason::ResticGone),
        Some((_, started)) if *started > created + START_TIME_SLACK => {
            Some(StaleReason::PidReused { started: *started })
        }
        Some(_) => None,
    }
}

/// A label selector of `key=value` pairs (comma-separated; `==` also accepted), as the
/// orchestrator's --agent-selector; the repo-manager only matches labels of one pod it got by
/// name, so set-based selectors are refused when parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector(Vec<(String, String)>);

impl std::str::FromStr for LabelSelector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let (key, value) = part
                .split_once("==")
                .or_else(|| part.split_once('='))
                .filter(|(key, _)| !key.trim().is_empty() && !key.ends_with('!'))
                .ok_or_else(|| {
                    format!(
                        "label selector `{text}`: `{part}` is not `key=value` (only equality \
                         selectors are supported)"
                    )
                })?;
            pairs.push((key.trim().to_string(), value.trim().to_string()));
        }
        if pairs.is_empty() {
            return Err(format!("label selector `{text}` selects nothing"));
        }
        Ok(LabelSelector(pairs))
    }
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// The agents to ask about locks of present agent pods.
pub struct Agents {
    pub directory: Box<dyn AgentDirectory>,
    pub selector: LabelSelector,
}

/// Judges restic locks by whether the stowage process named as their holder is gone.
pub struct LockHolders {
    pods: Box<dyn PodDirectory>,
    /// Names of the stowage workloads whose pods run restic (`stowage-repo-manager`,
    /// `stowage-volume-agent`).
    workloads: Vec<String>,
    /// Without agents, only locks of gone pods are judged.
    agents: Option<Agents>,
}

impl LockHolders {
    pub fn new(pods: Box<dyn PodDirectory>, workloads: Vec<String>) -> Self {
        LockHolders {
            pods,
            workloads,
            agents: None,
        }
    }

    /// Also asks the agent of a present agent pod which restic processes run there.
    pub fn with_agents(mut self, agents: Agents) -> Self {
        self.agents = Some(agents);
        self
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

    /// The `locks` whose stowage holder is gone (see the module comment), each with why.
    /// Locks written on `this_host` are not judged here (their pid tells whether their holder
    /// is alive). Each host is asked about once; a failed question keeps that host's locks (a
    /// lock is only ever removed on the API server's or the agent's word).
    pub async fn stale_locks(&self, locks: &[Lock], this_host: &str) -> Vec<StaleLock> {
        let hosts: BTreeSet<&str> = locks
            .iter()
            .map(|lock| lock.info.hostname.as_str())
            .filter(|host| *host != this_host && self.is_stowage_pod_name(host))
            .collect();
        let mut gone = BTreeSet::new();
        let mut present = Vec::new();
        for host in hosts {
            match self.pods.presence(host).await {
                Ok(PodPresence::Gone) => {
                    gone.insert(host);
                }
                Ok(PodPresence::Present(pod)) => present.push((host, pod)),
                Err(error) => tracing::warn!(
                    pod = host,
                    %error,
                    "cannot ask the API server whether the pod holding a restic lock exists; \
                     its lock is left to restic's rule"
                ),
            }
        }
        // The agents at once: one that does not answer costs its timeout once, not per host.
        let answers = futures::future::join_all(
            present
                .iter()
                .map(|(host, pod)| async move { (*host, self.ask_agent(host, pod).await) }),
        )
        .await;
        let agents: BTreeMap<&str, AgentProcesses> = answers
            .into_iter()
            .filter_map(|(host, answer)| Some((host, answer?)))
            .collect();
        locks
            .iter()
            .filter_map(|lock| {
                let host = lock.info.hostname.as_str();
                let reason = if gone.contains(host) {
                    StaleReason::PodGone
                } else {
                    judge_by_agent(lock, agents.get(host)?)?
                };
                Some(StaleLock {
                    id: lock.id.clone(),
                    holder: host.to_string(),
                    pid: lock.info.pid,
                    reason,
                })
            })
            .collect()
    }

    /// What the agent of present pod `host` says, when it is an agent pod and answers.
    async fn ask_agent(&self, host: &str, pod: &PresentPod) -> Option<AgentProcesses> {
        let agents = self.agents.as_ref()?;
        if !agents.selector.matches(&pod.labels) {
            return None;
        }
        let result = match &pod.ip {
            Some(ip) => agents.directory.running_restic(host, ip).await,
            None => Err(AgentQueryError::NoAddress {
                pod: host.to_string(),
            }),
        };
        match result {
            Ok(processes) => Some(processes),
            Err(error) => {
                tracing::warn!(
                    pod = host,
                    %error,
                    "cannot ask the agent which restic processes run in the pod holding a \
                     restic lock; its locks are kept"
                );
                None
            }
        }
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
                Ok(self.pods.get(name).cloned().unwrap_or(PodPresence::Gone))
            })
        }
    }

    /// Who an agent fake was asked about: pod name and IP.
    type AgentQuestions = Arc<Mutex<Vec<(String, String)>>>;

    /// Agents by pod IP; an IP without an entry does not answer. Records who was asked.
    #[derive(Default)]
    struct FakeAgents {
        by_ip: BTreeMap<String, AgentProcesses>,
        asked: AgentQuestions,
    }

    impl AgentDirectory for FakeAgents {
        fn running_restic<'a>(
            &'a self,
            pod: &'a str,
            ip: &'a str,
        ) -> BoxFuture<'a, Result<AgentProcesses, AgentQueryError>> {
            Box::pin(async move {
                self.asked
                    .lock()
                    .unwrap()
                    .push((pod.to_string(), ip.to_string()));
                self.by_ip
                    .get(ip)
                    .cloned()
                    .ok_or_else(|| AgentQueryError::Timeout {
                        pod: pod.into(),
                        url: format!("http://{ip}:8082"),
                        seconds: 5,
                    })
            })
        }
    }

    const AGENT_LABEL: (&str, &str) = ("app.kubernetes.io/name", "stowage-volume-agent");

    fn agent_pod(ip: Option<&str>) -> PodPresence {
        PodPresence::Present(PresentPod {
            labels: BTreeMap::from([(AGENT_LABEL.0.into(), AGENT_LABEL.1.into())]),
            ip: ip.map(str::to_string),
        })
    }

    fn present() -> PodPresence {
        PodPresence::Present(PresentPod::default())
    }

    fn lock(id: &str, host: &str) -> Lock {
        lock_of(id, host, 7, chrono::Utc::now())
    }

    fn lock_of(id: &str, host: &str, pid: i64, time: DateTime<Utc>) -> Lock {
        Lock {
            id: id.into(),
            info: LockInfo {
                // Seconds old: no age rule would call it stale.
                time: time.fixed_offset(),
                exclusive: true,
                hostname: host.into(),
                username: "root".into(),
                pid,
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

    /// `holders` that also ask `agents` about pods labelled as agents.
    fn holders_with_agents(pods: FakePods, agents: FakeAgents) -> (LockHolders, AgentQuestions) {
        let asked = agents.asked.clone();
        let (holders, _) = holders(pods);
        (
            holders.with_agents(Agents {
                directory: Box::new(agents),
                selector: "app.kubernetes.io/name=stowage-volume-agent"
                    .parse()
                    .unwrap(),
            }),
            asked,
        )
    }

    fn ids(stale: &[StaleLock]) -> Vec<&str> {
        stale.iter().map(|lock| lock.id.as_str()).collect()
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
                (
                    "stowage-volume-agent-live1".into(),
                    agent_pod(Some("10.0.0.1")),
                ),
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
        let stale = holders
            .stale_locks(&locks, "stowage-repo-manager-77f9c-here1")
            .await;
        assert_eq!(ids(&stale), ["a1", "a2", "c1"]);
        assert!(
            stale
                .iter()
                .all(|lock| lock.reason == StaleReason::PodGone && lock.pid == 7)
        );
        assert_eq!(stale[0].holder, "stowage-repo-manager-5d8f7b9c4d-gone1");
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
        assert_eq!(ids(&holders.stale_locks(&locks, "here").await), ["b1"]);
    }

    #[tokio::test]
    async fn a_present_agent_s_lock_is_stale_when_its_restic_no_longer_runs_there() {
        let now = Utc::now();
        let host = "stowage-volume-agent-live1";
        let (holders, asked) = holders_with_agents(
            FakePods {
                pods: BTreeMap::from([(host.into(), agent_pod(Some("10.0.0.1")))]),
                ..Default::default()
            },
            FakeAgents {
                by_ip: BTreeMap::from([(
                    "10.0.0.1".into(),
                    AgentProcesses {
                        host_name: host.into(),
                        running: vec![
                            // The live one: started before its lock.
                            (40, now - chrono::Duration::seconds(90)),
                            // Pid 41 is a later restic than the lock's.
                            (41, now - chrono::Duration::seconds(10)),
                        ],
                    },
                )]),
                ..Default::default()
            },
        );
        let locks = [
            lock_of("live", host, 40, now - chrono::Duration::seconds(60)),
            // Refreshed by its restic: the lock is newer than the process.
            lock_of("refreshed", host, 40, now - chrono::Duration::seconds(1)),
            lock_of("killed", host, 39, now - chrono::Duration::seconds(60)),
            lock_of("reused", host, 41, now - chrono::Duration::seconds(60)),
            // Within the start time's precision of a lock: kept.
            lock_of("close", host, 41, now - chrono::Duration::seconds(11)),
        ];
        let stale = holders.stale_locks(&locks, "here").await;
        assert_eq!(
            stale,
            [
                StaleLock {
                    id: "killed".into(),
                    holder: host.into(),
                    pid: 39,
                    reason: StaleReason::ResticGone,
                },
                StaleLock {
                    id: "reused".into(),
                    holder: host.into(),
                    pid: 41,
                    reason: StaleReason::PidReused {
                        started: now - chrono::Duration::seconds(10)
                    },
                },
            ]
        );
        assert!(
            stale[0]
                .reason
                .to_string()
                .contains("no restic with that pid")
        );
        assert!(stale[1].reason.to_string().contains("pid was reused"));
        // One question per agent pod, at its IP.
        assert_eq!(
            asked.lock().unwrap().clone(),
            [(host.to_string(), "10.0.0.1".to_string())]
        );
    }

    #[tokio::test]
    async fn a_present_pod_s_lock_is_kept_without_a_trustworthy_answer_from_its_agent() {
        let now = Utc::now();
        let (holders, asked) = holders_with_agents(
            FakePods {
                pods: BTreeMap::from([
                    // Does not answer.
                    (
                        "stowage-volume-agent-mute1".into(),
                        agent_pod(Some("10.0.0.9")),
                    ),
                    // No IP yet.
                    ("stowage-volume-agent-noip1".into(), agent_pod(None)),
                    // Answers as another host (say, on the node's network).
                    (
                        "stowage-volume-agent-other".into(),
                        agent_pod(Some("10.0.0.2")),
                    ),
                    // Not labelled as an agent (another repo-manager): never asked.
                    ("stowage-repo-manager-5d8f7b9c4d-peer1".into(), present()),
                ]),
                ..Default::default()
            },
            FakeAgents {
                by_ip: BTreeMap::from([(
                    "10.0.0.2".into(),
                    AgentProcesses {
                        host_name: "node-a".into(),
                        running: Vec::new(),
                    },
                )]),
                ..Default::default()
            },
        );
        let old = now - chrono::Duration::seconds(60);
        let locks = [
            lock_of("a", "stowage-volume-agent-mute1", 39, old),
            lock_of("b", "stowage-volume-agent-noip1", 39, old),
            lock_of("c", "stowage-volume-agent-other", 39, old),
            lock_of("d", "stowage-repo-manager-5d8f7b9c4d-peer1", 39, old),
        ];
        assert!(holders.stale_locks(&locks, "here").await.is_empty());
        let asked: Vec<String> = asked
            .lock()
            .unwrap()
            .iter()
            .map(|(pod, _)| pod.clone())
            .collect();
        assert_eq!(
            asked,
            ["stowage-volume-agent-mute1", "stowage-volume-agent-other"]
        );
    }

    #[tokio::test]
    async fn without_agents_a_present_pod_s_lock_is_kept() {
        let host = "stowage-volume-agent-live1";
        let (holders, _) = holders(FakePods {
            pods: BTreeMap::from([(host.into(), agent_pod(Some("10.0.0.1")))]),
            ..Default::default()
        });
        assert!(
            holders
                .stale_locks(&[lock("a", host)], "here")
                .await
                .is_empty()
        );
    }

    #[test]
    fn agent_selectors_are_equality_pairs_and_others_are_refused_by_name() {
        let selector: LabelSelector = "app.kubernetes.io/name=stowage-volume-agent, tier==node"
            .parse()
            .unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(selector.matches(&labels(&[
            ("app.kubernetes.io/name", "stowage-volume-agent"),
            ("tier", "node"),
            ("extra", "x"),
        ])));
        assert!(!selector.matches(&labels(&[(
            "app.kubernetes.io/name",
            "stowage-volume-agent"
        )])));
        for bad in ["tier!=node", "tier in (node)", "", " , "] {
            let error = bad.parse::<LabelSelector>().unwrap_err();
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
    }
}
