//! Finding the volume agent of a node: the static `--agent NODE=URL` list first, then the agent
//! DaemonSet's running pods (by label) on that node, reached at their pod IP. A node with no
//! agent is an error naming the node, returned at once rather than waited on.
//!
//! One listing of the agent pods serves every lookup for a few seconds: a backup of thousands
//! of volumes would otherwise list them once per volume. A node missing from the listing
//! re-lists sooner, so an agent that just (re)started is found without waiting out the cache.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ::kube::{Api, api::ListParams};
use k8s_openapi::api::core::v1::Pod;
use stowage_grpc::TracedChannel;
use stowage_proto::v1::volume_agent_client::VolumeAgentClient;

use super::Cluster;
use crate::error::{Error, Result};

pub type AgentClient = VolumeAgentClient<TracedChannel>;

#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("agent `{0}` is not of the form NODE=URL")]
    Malformed(String),
    #[error("agent for node `{node}`: {source}")]
    Endpoint {
        node: String,
        source: stowage_grpc::GrpcError,
    },
}

/// Parses `NODE=URL` agent flags into lazily connecting clients.
pub fn parse_static_agents(
    specs: &[String],
) -> Result<BTreeMap<String, AgentClient>, AgentConfigError> {
    specs
        .iter()
        .filter(|spec| !spec.is_empty())
        .map(|spec| {
            let (node, url) = spec
                .split_once('=')
                .ok_or_else(|| AgentConfigError::Malformed(spec.clone()))?;
            let channel =
                stowage_grpc::connect_lazy(url).map_err(|source| AgentConfigError::Endpoint {
                    node: node.to_string(),
                    source,
                })?;
            Ok((node.to_string(), VolumeAgentClient::new(channel)))
        })
        .collect()
}

/// How long one listing of the agent pods answers lookups. An agent pod restarted with a new IP
/// within this window fails the volumes sent to its old IP, like an agent killed mid-backup.
const LISTING_FRESH_FOR: Duration = Duration::from_secs(5);
/// How soon a lookup for a node missing from the listing may list again, so the volumes of a
/// node with no agent do not each list the pods.
const MISSING_NODE_RELIST_AFTER: Duration = Duration::from_secs(1);

/// The running agent pods' IPs by node, as listed at `fetched_at`.
#[derive(Debug)]
struct AgentListing {
    fetched_at: Instant,
    ip_by_node: BTreeMap<String, String>,
}

impl AgentListing {
    /// The listing's answer for `node` at `now`, or None when it is too old to give one.
    fn lookup(&self, node: &str, now: Instant) -> Option<Option<&str>> {
        let age = now.saturating_duration_since(self.fetched_at);
        match self.ip_by_node.get(node) {
            Some(ip) if age < LISTING_FRESH_FOR => Some(Some(ip)),
            None if age < MISSING_NODE_RELIST_AFTER => Some(None),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Agents {
    static_agents: BTreeMap<String, AgentClient>,
    cluster: Option<Cluster>,
    /// Label selector of the agent DaemonSet's pods.
    selector: String,
    port: u16,
    /// The last listing of agent pods. An async lock, so lookups arriving together wait for
    /// one listing instead of each sending their own.
    listing: Arc<tokio::sync::Mutex<Option<AgentListing>>>,
    /// Clients for discovered agents by URL, so each pod IP gets one connection.
    discovered: Arc<Mutex<BTreeMap<String, AgentClient>>>,
    /// This orchestrator's leader term, sent with every request (the fencing rule).
    term: stowage_contract::fencing::LeaderTerm,
}

impl Agents {
    pub fn new(
        static_agents: BTreeMap<String, AgentClient>,
        cluster: Option<Cluster>,
        selector: String,
        port: u16,
    ) -> Agents {
        Agents {
            static_agents,
            cluster,
            selector,
            port,
            listing: Arc::default(),
            discovered: Arc::default(),
            term: Default::default(),
        }
    }

    /// Sends `term` with every request, once set (see `stowage_contract::fencing`).
    pub fn with_term(mut self, term: stowage_contract::fencing::LeaderTerm) -> Agents {
        self.term = term;
        self
    }

    /// `message` as a request carrying this orchestrator's leader term, when it has one, so
    /// an agent that has heard from a newer leader refuses it.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        stowage_grpc::fencing::with_term(&self.term, message)
    }

    /// The agent serving `node`, or [`Error::NoAgent`].
    pub async fn for_node(&self, node: &str) -> Result<AgentClient> {
        if let Some(client) = self.static_agents.get(node) {
            return Ok(client.clone());
        }
        let Some(cluster) = &self.cluster else {
            return Err(Error::NoAgent(node.to_string()));
        };
        let ip = {
            let mut listing = self.listing.lock().await;
            let cached = listing
                .as_ref()
                .and_then(|listing| listing.lookup(node, Instant::now()))
                .map(|ip| ip.map(str::to_string));
            match cached {
                Some(ip) => ip,
                None => {
                    let fresh = self.list_agent_pods(cluster).await?;
                    let ip = fresh.ip_by_node.get(node).cloned();
                    *listing = Some(fresh);
                    ip
                }
            }
        }
        .ok_or_else(|| Error::NoAgent(node.to_string()))?;
        let url = format!("http://{ip}:{}", self.port);
        let mut discovered = self.discovered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = discovered.get(&url) {
            return Ok(client.clone());
        }
        let channel = stowage_grpc::connect_lazy(&url)
            .map_err(|error| Error::Failed(format!("agent of node {node} at {url}: {error}")))?;
        let client = VolumeAgentClient::new(channel);
        discovered.insert(url, client.clone());
        Ok(client)
    }

    async fn list_agent_pods(&self, cluster: &Cluster) -> Result<AgentListing> {
        let api: Api<Pod> = Api::namespaced(cluster.client().clone(), cluster.stowage_namespace());
        let pods = api
            .list(&ListParams::default().labels(&self.selector))
            .await
            .map_err(Error::kube("listing volume agent pods"))?;
        let mut ip_by_node = BTreeMap::new();
        for pod in pods.items {
            let (Some(spec), Some(status)) = (pod.spec, pod.status) else {
                continue;
            };
            if let (Some(node), Some("Running"), Some(ip)) =
                (spec.node_name, status.phase.as_deref(), status.pod_ip)
            {
                // During a rollout a node briefly has two running agents; either serves.
                ip_by_node.entry(node).or_insert(ip);
            }
        }
        Ok(AgentListing {
            fetched_at: Instant::now(),
            ip_by_node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_agents_parse_and_unknown_nodes_have_no_agent() {
        let agents = parse_static_agents(&["node-a=http://127.0.0.1:1".to_string()]).unwrap();
        assert!(agents.contains_key("node-a"));
        assert!(matches!(
            parse_static_agents(&["node-a".to_string()]),
            Err(AgentConfigError::Malformed(_))
        ));
        let agents = Agents::new(agents, None, String::new(), 8082);
        assert!(agents.for_node("node-a").await.is_ok());
        let error = agents.for_node("node-b").await.err().unwrap();
        assert_eq!(error.to_string(), "no agent on node node-b");
    }

    #[test]
    fn a_listing_answers_for_a_while_and_a_missing_node_relists_sooner() {
        let fetched_at = Instant::now();
        let listing = AgentListing {
            fetched_at,
            ip_by_node: BTreeMap::from([("node-a".to_string(), "10.0.0.1".to_string())]),
        };
        let at = |elapsed: Duration| fetched_at + elapsed;
        assert_eq!(
            listing.lookup("node-a", at(Duration::ZERO)),
            Some(Some("10.0.0.1"))
        );
        assert_eq!(
            listing.lookup("node-a", at(LISTING_FRESH_FOR - Duration::from_millis(1))),
            Some(Some("10.0.0.1"))
        );
        assert_eq!(listing.lookup("node-a", at(LISTING_FRESH_FOR)), None);
        assert_eq!(listing.lookup("node-b", at(Duration::ZERO)), Some(None));
        assert_eq!(
            listing.lookup("node-b", at(MISSING_NODE_RELIST_AFTER)),
            None
        );
    }
}
