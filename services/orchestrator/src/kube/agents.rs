//! Finding the volume agent of a node: the static `--agent NODE=URL` list first, then the agent
//! DaemonSet's running pods (by label) on that node, reached at their pod IP. A node with no
//! agent is an error naming the node, returned at once rather than waited on.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
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

#[derive(Clone)]
pub struct Agents {
    static_agents: BTreeMap<String, AgentClient>,
    cluster: Option<Cluster>,
    /// Label selector of the agent DaemonSet's pods.
    selector: String,
    port: u16,
    /// Clients for discovered agents by URL, so each pod IP gets one connection.
    discovered: Arc<Mutex<BTreeMap<String, AgentClient>>>,
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
            discovered: Arc::default(),
        }
    }

    /// The agent serving `node`, or [`Error::NoAgent`].
    pub async fn for_node(&self, node: &str) -> Result<AgentClient> {
        if let Some(client) = self.static_agents.get(node) {
            return Ok(client.clone());
        }
        let Some(cluster) = &self.cluster else {
            return Err(Error::NoAgent(node.to_string()));
        };
        let api: Api<Pod> = Api::namespaced(cluster.client().clone(), cluster.stowage_namespace());
        let pods = api
            .list(&ListParams::default().labels(&self.selector))
            .await
            .map_err(Error::kube("listing volume agent pods"))?;
        let ip = pods
            .items
            .iter()
            .filter(|pod| pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .filter(|pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .find_map(|pod| pod.status.as_ref().and_then(|s| s.pod_ip.clone()))
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
}
