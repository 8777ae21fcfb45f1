//! The Kubernetes deployment under `deploy/kustomize`: renders the base, every platform overlay
//! and the components with `kubectl kustomize`, and checks the parsed manifests: each
//! platform's kubelet pods path reaches the agent's hostPath, mount and flag alike; privileged
//! only where the platform needs it; the OpenShift SCC binding and namespace annotation; the
//! gRPC health probes; the two replicas that elect a leader; the Velero CRDs; RBAC; the monitoring component; that every setting a
//! container is given is a flag its binary accepts (checked against the real binary's
//! `--help`); and that every image a cluster is told to pull, the restore helper's as the
//! orchestrator derives it, is one the documented image builds produce.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Component, Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
};

use serde::Deserialize;
use serde_json::Value;
use stowage_e2e::{binary, workspace_root};
use stowage_leader::LEADER_LABEL;

const NAMESPACE: &str = "stowage";
const AGENT: &str = "stowage-volume-agent";
const ORCHESTRATOR: &str = "stowage-orchestrator";
const REPO_MANAGER: &str = "stowage-repo-manager";

/// Each platform and the kubelet pods directory its nodes use.
const PLATFORMS: [(&str, &str); 4] = [
    ("base", "/var/lib/kubelet/pods"),
    ("overlays/rancher", "/opt/rke/var/lib/kubelet/pods"),
    (
        "overlays/openshift",
        "/var/lib/origin/openshift.local.volumes/pods",
    ),
    ("overlays/pks", "/var/vcap/data/kubelet/pods"),
];

fn kustomize_dir() -> PathBuf {
    workspace_root().join("deploy/kustomize")
}

/// The rendered objects of one kustomization.
#[derive(Clone, Debug)]
struct Rendered {
    name: String,
    objects: Vec<Value>,
}

impl Rendered {
    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.name))
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |object| object["kind"] == kind)
    }

    /// Deployments and DaemonSets of stowage itself (not Jaeger).
    fn workloads(&self) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|object| object["kind"] == "Deployment" || object["kind"] == "DaemonSet")
            .filter(|object| {
                object["metadata"]["name"]
                    .as_str()
                    .is_some_and(|name| name.starts_with("stowage-"))
            })
            .collect()
    }

    fn agent_container(&self) -> &Value {
        container(self.get("DaemonSet", AGENT), "volume-agent")
    }

    /// A ConfigMap's data; generated ConfigMaps are found by their name before the hash.
    fn config_map_data(&self, name: &str) -> BTreeMap<String, String> {
        let config_map = self
            .of_kind("ConfigMap")
            .find(|object| object["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no ConfigMap {name}", self.name));
        config_map["data"]
            .as_object()
            .map(|data| {
                data.iter()
                    .map(|(key, value)| (key.clone(), value.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The environment a container ends up with: `envFrom` ConfigMaps, then `env`. Values
    /// from the downward API or secrets are `None`.
    fn effective_env(&self, container: &Value) -> BTreeMap<String, Option<String>> {
        let mut env = BTreeMap::new();
        for source in array(&container["envFrom"]) {
            let name = source["configMapRef"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: envFrom other than a ConfigMap", self.name));
            for (key, value) in self.config_map_data(name) {
                env.insert(key, Some(value));
            }
        }
        for variable in array(&container["env"]) {
            let name = variable["name"].as_str().expect("env entries have a name");
            env.insert(
                name.to_string(),
                variable["value"].as_str().map(String::from),
            );
        }
        env
    }
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    array(&workload["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|container| container["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {}", workload["metadata"]["name"]))
}

fn containers(workload: &Value) -> &[Value] {
    array(&workload["spec"]["template"]["spec"]["containers"])
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    array(&container["env"])
        .iter()
        .find(|variable| variable["name"] == name)
}

fn volume<'a>(workload: &'a Value, name: &str) -> &'a Value {
    array(&workload["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find(|volume| volume["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name} in {}", workload["metadata"]["name"]))
}

fn volume_mount<'a>(container: &'a Value, name: &str) -> &'a Value {
    array(&container["volumeMounts"])
        .iter()
        .find(|mount| mount["name"] == name)
        .unwrap_or_else(|| panic!("no mount of volume {name} in {}", container["name"]))
}

/// The workspace binary a container runs, from its image (`stowage/stowage-x:tag`).
fn binary_of(container: &Value) -> String {
    let image = container["image"]
        .as_str()
        .expect("containers have an image");
    let repository = image.rsplit('/').next().unwrap_or(image);
    repository
        .split(':')
        .next()
        .unwrap_or(repository)
        .to_string()
}

/// `kubectl kustomize <dir>`, parsed.
fn kustomize(dir: &Path) -> Vec<Value> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|error| {
            panic!("running kubectl kustomize (is kubectl installed?): {error}")
        });
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("kustomize prints UTF-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("kustomize prints valid YAML"))
        .filter(|object| !object.is_null())
        .collect()
}

/// A rendering of one directory under deploy/kustomize, cached: kubectl takes a moment.
fn render(relative: &str) -> Rendered {
    static CACHE: OnceLock<Mutex<BTreeMap<String, Rendered>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(rendered) = cache.lock().unwrap().get(relative) {
        return rendered.clone();
    }
    let rendered = Rendered {
        name: relative.to_string(),
        objects: kustomize(&kustomize_dir().join(relative)),
    };
    cache
        .lock()
        .unwrap()
        .insert(relative.to_string(), rendered.clone());
    rendered
}

/// `from` → `to` as a relative path; kustomize refuses absolute paths to other kustomizations.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for part in &to[common..] {
        path.push(part.as_os_str());
    }
    path
}

/// What a platform team writes to use our components: a kustomization with `resources` =
/// one of ours and `components` = some of ours. Cached like [`render`].
fn render_with_components(resource: &str, components: &[&str]) -> Rendered {
    static CACHE: OnceLock<Mutex<BTreeMap<String, Rendered>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = format!("{resource} + {components:?}");
    if let Some(rendered) = cache.lock().unwrap().get(&key) {
        return rendered.clone();
    }
    let rendered = render_components_uncached(resource, components);
    cache.lock().unwrap().insert(key, rendered.clone());
    rendered
}

fn render_components_uncached(resource: &str, components: &[&str]) -> Rendered {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().canonicalize().expect("temp dir path");
    let ours = kustomize_dir()
        .canonicalize()
        .expect("deploy/kustomize exists");
    let reference = |relative: &str| {
        relative_path(&root, &ours.join(relative))
            .display()
            .to_string()
    };
    let mut text = format!("resources:\n  - {}\ncomponents:\n", reference(resource));
    for component in components {
        text.push_str(&format!("  - {}\n", reference(component)));
    }
    std::fs::write(root.join("kustomization.yaml"), text).expect("writing kustomization");
    Rendered {
        name: format!("{resource} + {components:?}"),
        objects: kustomize(&root),
    }
}

fn all_platforms() -> Vec<Rendered> {
    PLATFORMS.iter().map(|(dir, _)| render(dir)).collect()
}

const ALL_COMPONENTS: [&str; 4] = [
    "components/jaeger",
    "components/s3",
    "components/mtls",
    "components/monitoring",
];

/// Every combination we ship: each platform alone and with every component.
fn all_renderings() -> Vec<Rendered> {
    let mut all = all_platforms();
    for (dir, _) in PLATFORMS {
        all.push(render_with_components(dir, &ALL_COMPONENTS));
    }
    all
}

#[test]
fn each_platform_mounts_its_kubelet_pods_dir_into_the_agent_and_names_it_in_the_flag() {
    for (dir, pods_root) in PLATFORMS {
        let rendered = render(dir);
        let agent = rendered.get("DaemonSet", AGENT);
        let host_pods = volume(agent, "host-pods");
        assert_eq!(host_pods["hostPath"]["path"], pods_root, "{dir}: hostPath");
        let container = rendered.agent_container();
        let mount = volume_mount(container, "host-pods");
        assert_eq!(mount["mountPath"], pods_root, "{dir}: mount path");
        assert_eq!(
            mount["mountPropagation"], "HostToContainer",
            "{dir}: volumes mounted after the agent started must show up in it"
        );
        assert_eq!(
            env_value(container, "STOWAGE_PODS_ROOT").map(|variable| &variable["value"]),
            Some(&Value::from(pods_root)),
            "{dir}: STOWAGE_PODS_ROOT"
        );
        // The one-place setting is build-time only and never reaches the cluster.
        assert!(
            rendered.find("ConfigMap", "stowage-host-paths").is_none(),
            "{dir}: stowage-host-paths is local config"
        );
    }
}

#[test]
fn components_keep_each_platforms_pods_root() {
    for (dir, pods_root) in PLATFORMS {
        let rendered = render_with_components(dir, &ALL_COMPONENTS);
        let agent = rendered.get("DaemonSet", AGENT);
        assert_eq!(volume(agent, "host-pods")["hostPath"]["path"], pods_root);
        assert_eq!(
            env_value(rendered.agent_container(), "STOWAGE_PODS_ROOT").unwrap()["value"],
            pods_root
        );
    }
}

#[test]
fn agent_is_privileged_only_on_openshift_and_pks() {
    for (dir, _) in PLATFORMS {
        let rendered = render(dir);
        let privileged = rendered.agent_container()["securityContext"]["privileged"]
            .as_bool()
            .unwrap_or(false);
        let expected = matches!(dir, "overlays/openshift" | "overlays/pks");
        assert_eq!(privileged, expected, "{dir}: agent privileged");
        for name in [ORCHESTRATOR, REPO_MANAGER] {
            let deployment = rendered.get("Deployment", name);
            for container in containers(deployment) {
                let security = &container["securityContext"];
                assert_ne!(security["privileged"], true, "{dir}: {name} privileged");
                assert_eq!(security["allowPrivilegeEscalation"], false, "{dir}: {name}");
                assert_eq!(security["readOnlyRootFilesystem"], true, "{dir}: {name}");
            }
            assert_eq!(
                deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], true,
                "{dir}: {name} runs as non-root"
            );
        }
    }
}

#[test]
fn openshift_binds_the_agent_to_the_privileged_scc_and_clears_the_node_selector() {
    let openshift = render("overlays/openshift");
    let service_account =
        openshift.get("DaemonSet", AGENT)["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .expect("the agent has its own ServiceAccount")
            .to_string();
    openshift.get("ServiceAccount", &service_account);
    let binding = openshift
        .of_kind("RoleBinding")
        .find(|binding| binding["roleRef"]["name"] == "system:openshift:scc:privileged")
        .expect("a RoleBinding to the privileged SCC's ClusterRole");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["metadata"]["namespace"], NAMESPACE);
    assert!(
        array(&binding["subjects"]).iter().any(|subject| {
            subject["kind"] == "ServiceAccount"
                && subject["name"] == service_account.as_str()
                && subject["namespace"] == NAMESPACE
        }),
        "the SCC binding names the agent's ServiceAccount: {binding}"
    );
    let namespace = openshift.get("Namespace", NAMESPACE);
    assert_eq!(
        namespace["metadata"]["annotations"]["openshift.io/node-selector"], "",
        "an empty project node selector lets the DaemonSet land on every node"
    );
    // The restricted SCC assigns UIDs per namespace: a fixed UID would be refused.
    for name in [ORCHESTRATOR, REPO_MANAGER] {
        let pod_security =
            &openshift.get("Deployment", name)["spec"]["template"]["spec"]["securityContext"];
        assert!(
            pod_security.get("runAsUser").is_none(),
            "{name}: {pod_security}"
        );
        assert!(
            pod_security.get("fsGroup").is_none(),
            "{name}: {pod_security}"
        );
    }

    // Nothing OpenShift-specific leaks into the other platforms.
    for dir in ["base", "overlays/rancher", "overlays/pks"] {
        let rendered = render(dir);
        assert!(
            rendered
                .of_kind("RoleBinding")
                .all(|binding| binding["roleRef"]["name"] != "system:openshift:scc:privileged"),
            "{dir} binds an OpenShift SCC"
        );
        assert!(
            rendered.get("Namespace", NAMESPACE)["metadata"]["annotations"]
                .get("openshift.io/node-selector")
                .is_none(),
            "{dir}: OpenShift annotation"
        );
    }
}

#[test]
fn services_are_probed_on_their_grpc_health_service() {
    let expected_service = BTreeMap::from([
        (ORCHESTRATOR, "stowage.v1.Orchestrator"),
        (REPO_MANAGER, "stowage.v1.RepoManager"),
        (AGENT, "stowage.v1.VolumeAgent"),
    ]);
    for rendered in all_platforms() {
        let workloads = rendered.workloads();
        assert_eq!(
            workloads.len(),
            3,
            "{}: three stowage workloads",
            rendered.name
        );
        for workload in workloads {
            let name = workload["metadata"]["name"].as_str().unwrap();
            let container = &containers(workload)[0];
            let env = rendered.effective_env(container);
            let listen = env
                .get("STOWAGE_LISTEN")
                .cloned()
                .flatten()
                .unwrap_or_else(|| panic!("{name}: STOWAGE_LISTEN set"));
            let port: u64 = listen
                .rsplit(':')
                .next()
                .and_then(|port| port.parse().ok())
                .unwrap_or_else(|| panic!("{name}: STOWAGE_LISTEN {listen} has a port"));
            let container_port = array(&container["ports"])
                .iter()
                .find(|candidate| candidate["name"] == "grpc")
                .unwrap_or_else(|| panic!("{name}: a port named grpc"));
            assert_eq!(container_port["containerPort"], port, "{name}: grpc port");
            for probe in ["readinessProbe", "livenessProbe"] {
                let grpc = &container[probe]["grpc"];
                assert_eq!(
                    grpc["port"], port,
                    "{name}: {probe} uses the native gRPC probe"
                );
            }
            let elected = name != AGENT;
            if elected {
                // Both replicas ready (leader and standby), so that a rollout's new pod becomes
                // available and a drain of the leader's node is allowed by the budget.
                assert_eq!(
                    container["readinessProbe"]["grpc"]["service"], "",
                    "{name}: ready on the process-wide health, as a standby is too"
                );
            } else {
                assert_eq!(
                    container["readinessProbe"]["grpc"]["service"], expected_service[name],
                    "{name}: ready when its own service is SERVING"
                );
            }

            // A Service selects the pods (an elected service's only the leader's, by the
            // label the leader sets on its own Pod) and targets the gRPC port.
            let service = rendered.get("Service", name);
            let selector = service["spec"]["selector"].as_object().expect("selector");
            let pod_labels = &workload["spec"]["template"]["metadata"]["labels"];
            for (key, value) in selector {
                if elected && key == LEADER_LABEL {
                    continue;
                }
                assert_eq!(&pod_labels[key], value, "{name}: Service selects the pods");
            }
            if elected {
                assert_eq!(
                    selector.get(LEADER_LABEL),
                    Some(&Value::from("true")),
                    "{name}: the Service routes to the leader only"
                );
                // Set by the leader alone: never on every pod, and not what the Deployment
                // and the budget count (they count both replicas).
                assert!(pod_labels.get(LEADER_LABEL).is_none(), "{name}: template");
                for (kind, path) in [
                    ("Deployment", &workload["spec"]["selector"]),
                    (
                        "PodDisruptionBudget",
                        &rendered.get("PodDisruptionBudget", name)["spec"]["selector"],
                    ),
                ] {
                    assert!(
                        path["matchLabels"].get(LEADER_LABEL).is_none()
                            && path.get("matchExpressions").is_none(),
                        "{name}: the {kind} selects both replicas"
                    );
                }
                assert_eq!(
                    rendered.get("PodDisruptionBudget", name)["spec"]["minAvailable"],
                    1
                );
                let rolling = &workload["spec"]["strategy"]["rollingUpdate"];
                assert_eq!(
                    (&rolling["maxSurge"], &rolling["maxUnavailable"]),
                    (&Value::from(1), &Value::from(0))
                );
            }
            assert!(
                array(&service["spec"]["ports"])
                    .iter()
                    .any(|service_port| service_port["port"] == port
                        && service_port["targetPort"] == "grpc"),
                "{name}: Service port {port}"
            );
        }
    }
}

#[test]
fn orchestrator_finds_the_agents_and_the_repo_manager_it_is_deployed_with() {
    for rendered in all_platforms() {
        let orchestrator = rendered.get("Deployment", ORCHESTRATOR);
        let env = rendered.effective_env(&containers(orchestrator)[0]);
        let setting = |name: &str| {
            env.get(name)
                .cloned()
                .flatten()
                .unwrap_or_else(|| panic!("{}: orchestrator {name} set", rendered.name))
        };

        let agent = rendered.get("DaemonSet", AGENT);
        let agent_labels = &agent["spec"]["template"]["metadata"]["labels"];
        for requirement in setting("STOWAGE_AGENT_SELECTOR").split(',') {
            let (key, value) = requirement
                .split_once('=')
                .expect("the selector is key=value pairs");
            assert_eq!(agent_labels[key], value, "agent pods carry {requirement}");
        }
        let agent_port = array(&containers(agent)[0]["ports"])
            .iter()
            .find(|port| port["name"] == "grpc")
            .expect("agent gRPC port")["containerPort"]
            .to_string();
        assert_eq!(setting("STOWAGE_AGENT_PORT"), agent_port);

        // http://<service>.<namespace>.svc:<port>
        let repo_manager = setting("STOWAGE_REPO_MANAGER");
        let authority = repo_manager
            .strip_prefix("http://")
            .expect("plain-text gRPC inside the cluster");
        let (host, port) = authority.split_once(':').expect("host:port");
        let service_name = host.split('.').next().unwrap();
        assert_eq!(host, format!("{service_name}.{NAMESPACE}.svc"));
        let service = rendered.get("Service", service_name);
        assert!(
            array(&service["spec"]["ports"])
                .iter()
                .any(|service_port| service_port["port"].as_u64() == port.parse().ok()),
            "{}: Service {service_name} has port {port}",
            rendered.name
        );
        assert_eq!(
            service["spec"]["selector"]["app.kubernetes.io/name"],
            REPO_MANAGER
        );
    }
}

/// Whether `selector` (a `matchLabels` map) selects pods with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(match_labels) = selector["matchLabels"].as_object() else {
        return false;
    };
    selector.get("matchExpressions").is_none()
        && !match_labels.is_empty()
        && match_labels
            .iter()
            .all(|(key, value)| &labels[key] == value)
}

#[test]
fn agents_and_the_repo_manager_admit_only_their_stowage_callers() {
    for rendered in all_platforms() {
        let labels = |name: &str| {
            rendered.get("Deployment", name)["spec"]["template"]["metadata"]["labels"].clone()
        };
        let orchestrator_labels = labels(ORCHESTRATOR);
        let repo_manager_labels = labels(REPO_MANAGER);
        // The orchestrator calls both; the repo-manager calls the agents (GetAgentInfo, to
        // judge the restic locks of their pods).
        for (kind, name, callers) in [
            (
                "DaemonSet",
                AGENT,
                vec![&orchestrator_labels, &repo_manager_labels],
            ),
            ("Deployment", REPO_MANAGER, vec![&orchestrator_labels]),
        ] {
            let workload = rendered.get(kind, name);
            let pod_labels = &workload["spec"]["template"]["metadata"]["labels"];
            let policies: Vec<&Value> = rendered
                .of_kind("NetworkPolicy")
                .filter(|policy| selects(&policy["spec"]["podSelector"], pod_labels))
                .collect();
            assert!(
                !policies.is_empty(),
                "{}: no NetworkPolicy selects {name}",
                rendered.name
            );
            for policy in policies {
                assert!(
                    array(&policy["spec"]["policyTypes"])
                        .iter()
                        .any(|kind| kind == "Ingress")
                );
                let rules = array(&policy["spec"]["ingress"]);
                assert!(!rules.is_empty(), "{name}: an ingress rule");
                for rule in rules {
                    let peers = array(&rule["from"]);
                    if peers.is_empty() {
                        // Open to every caller: only the Prometheus scrape port may be.
                        let ports = array(&rule["ports"]);
                        assert!(
                            !ports.is_empty() && ports.iter().all(|port| port["port"] == "metrics"),
                            "{name}: a rule without `from` opens more than metrics: {rule}"
                        );
                        assert!(
                            array(&containers(workload)[0]["ports"])
                                .iter()
                                .any(|port| port["name"] == "metrics"),
                            "{name}: no metrics port to open"
                        );
                        continue;
                    }
                    for peer in peers {
                        assert!(
                            peer.get("ipBlock").is_none()
                                && peer.get("namespaceSelector").is_none()
                                && callers
                                    .iter()
                                    .any(|labels| selects(&peer["podSelector"], labels)),
                            "{name}: peer other than its callers: {peer}"
                        );
                    }
                    let grpc_port = array(&containers(workload)[0]["ports"])
                        .iter()
                        .find(|port| port["name"] == "grpc")
                        .expect("a grpc port");
                    for port in array(&rule["ports"]) {
                        assert!(
                            port["port"] == grpc_port["name"]
                                || port["port"] == grpc_port["containerPort"],
                            "{name}: {port}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn agent_runs_on_every_node_with_node_name_scratch_and_credentials() {
    for rendered in all_platforms() {
        let agent = rendered.get("DaemonSet", AGENT);
        let pod = &agent["spec"]["template"]["spec"];
        assert!(
            array(&pod["tolerations"])
                .iter()
                .any(|toleration| toleration["operator"] == "Exists"
                    && toleration.get("key").is_none()
                    && toleration.get("effect").is_none()),
            "{}: tolerates every taint",
            rendered.name
        );
        let container = rendered.agent_container();
        let node_name = env_value(container, "NODE_NAME").expect("NODE_NAME set");
        assert_eq!(
            node_name["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
        let scratch_dir =
            env_value(container, "STOWAGE_SCRATCH_DIR").expect("scratch dir set")["value"].clone();
        let scratch_mount = array(&container["volumeMounts"])
            .iter()
            .find(|mount| mount["mountPath"] == scratch_dir)
            .expect("STOWAGE_SCRATCH_DIR is a mount");
        let scratch_volume = volume(agent, scratch_mount["name"].as_str().unwrap());
        assert!(
            scratch_volume["emptyDir"].is_object(),
            "scratch is an emptyDir"
        );

        let credentials = volume(agent, "cloud-credentials");
        assert!(
            credentials["secret"]["secretName"]
                .as_str()
                .is_some_and(|name| name.starts_with("stowage-cloud-credentials")),
            "{credentials}"
        );
        let credentials_mount = volume_mount(container, "cloud-credentials");
        let credentials_file = env_value(container, "AWS_SHARED_CREDENTIALS_FILE")
            .expect("credentials file named")["value"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            credentials_file.starts_with(credentials_mount["mountPath"].as_str().unwrap()),
            "{credentials_file} is inside the mounted Secret"
        );
    }
}

#[test]
fn every_container_has_resources_and_exports_traces_under_its_name() {
    for rendered in all_renderings() {
        for workload in rendered.workloads() {
            for container in containers(workload) {
                let name = container["name"].as_str().unwrap();
                for bound in ["requests", "limits"] {
                    for resource in ["cpu", "memory"] {
                        assert!(
                            container["resources"][bound][resource].is_string(),
                            "{}: {name} {bound}.{resource}",
                            rendered.name
                        );
                    }
                }
                let env = rendered.effective_env(container);
                assert!(
                    env.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"),
                    "{}: {name} OTEL_EXPORTER_OTLP_ENDPOINT",
                    rendered.name
                );
                assert_eq!(
                    env.get("OTEL_SERVICE_NAME").cloned().flatten(),
                    Some(binary_of(container)),
                    "{}: {name} service name",
                    rendered.name
                );
            }
        }
    }
}

#[test]
fn secrets_reach_containers_only_by_reference() {
    for rendered in all_renderings() {
        for workload in rendered.workloads() {
            for container in containers(workload) {
                for variable in array(&container["env"]) {
                    let name = variable["name"].as_str().unwrap();
                    let sensitive = ["KEY", "PASSWORD", "SECRET", "TOKEN"]
                        .iter()
                        .any(|word| name.contains(word));
                    if sensitive {
                        // A Secret's value by reference, or the path of a file in a
                        // mounted Secret (TLS keys).
                        let by_reference = variable.get("value").is_none()
                            && variable["valueFrom"]["secretKeyRef"].is_object();
                        let in_mounted_secret = variable["value"].as_str().is_some_and(|path| {
                            array(&container["volumeMounts"]).iter().any(|mount| {
                                mount["mountPath"]
                                    .as_str()
                                    .is_some_and(|dir| path.starts_with(&format!("{dir}/")))
                                    && volume(workload, mount["name"].as_str().unwrap())["secret"]
                                        .is_object()
                            })
                        });
                        assert!(
                            by_reference || in_mounted_secret,
                            "{}: {name} must come from a Secret: {variable}",
                            rendered.name
                        );
                    }
                }
            }
        }
        for config_map in rendered.of_kind("ConfigMap") {
            for key in config_map["data"]
                .as_object()
                .into_iter()
                .flat_map(|data| data.keys())
            {
                assert!(
                    !["KEY", "PASSWORD", "SECRET", "TOKEN"]
                        .iter()
                        .any(|word| key.to_uppercase().contains(word)),
                    "{}: ConfigMap {} holds {key}",
                    rendered.name,
                    config_map["metadata"]["name"]
                );
            }
        }
    }
}

/// The emptyDir volume mounted at `path` in `container`, if any.
fn empty_dir_at<'a>(workload: &'a Value, container: &Value, path: &str) -> Option<&'a Value> {
    let mount = array(&container["volumeMounts"])
        .iter()
        .find(|mount| mount["mountPath"] == path)?;
    let volume = volume(workload, mount["name"].as_str()?);
    volume["emptyDir"].is_object().then_some(volume)
}

#[test]
fn read_only_containers_can_write_tmp_and_their_scratch_dir() {
    for rendered in all_platforms() {
        for workload in rendered.workloads() {
            for container in containers(workload) {
                let name = container["name"].as_str().unwrap();
                assert_eq!(
                    container["securityContext"]["readOnlyRootFilesystem"], true,
                    "{}: {name}",
                    rendered.name
                );
                // restic stages pack files under $TMPDIR.
                assert!(
                    empty_dir_at(workload, container, "/tmp").is_some(),
                    "{}: {name} has no writable /tmp",
                    rendered.name
                );
                if let Some(Some(scratch)) =
                    rendered.effective_env(container).get("STOWAGE_SCRATCH_DIR")
                {
                    assert!(
                        empty_dir_at(workload, container, scratch).is_some(),
                        "{}: {name}'s STOWAGE_SCRATCH_DIR {scratch} is not an emptyDir",
                        rendered.name
                    );
                }
            }
        }
    }
}

#[test]
fn jaeger_component_receives_otlp_from_every_service() {
    let rendered = render_with_components("base", &["components/jaeger"]);
    let service = rendered.get("Service", "jaeger");
    let otlp_port = array(&service["spec"]["ports"])
        .iter()
        .find(|port| port["name"] == "otlp-grpc")
        .expect("Jaeger's Service exposes OTLP gRPC")["port"]
        .as_u64()
        .unwrap();
    let jaeger = rendered.get("Deployment", "jaeger");
    let selector = service["spec"]["selector"].as_object().unwrap();
    for (key, value) in selector {
        assert_eq!(
            &jaeger["spec"]["template"]["metadata"]["labels"][key],
            value
        );
    }
    let expected = format!("http://jaeger.{NAMESPACE}.svc:{otlp_port}");
    for workload in rendered.workloads() {
        for container in containers(workload) {
            assert_eq!(
                rendered
                    .effective_env(container)
                    .get("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .cloned()
                    .flatten()
                    .as_deref(),
                Some(expected.as_str()),
                "{}",
                container["name"]
            );
        }
    }
    // Without the component, spans stay off rather than pointing at a collector that
    // is not there.
    let base = render("base");
    assert_eq!(
        base.config_map_data("stowage-telemetry")["OTEL_EXPORTER_OTLP_ENDPOINT"],
        ""
    );
}

/// The cert-manager Certificate whose Secret a workload mounts as `tls`.
fn certificate_of<'a>(rendered: &'a Rendered, workload: &Value) -> &'a Value {
    let secret = &volume(workload, "tls")["secret"]["secretName"];
    rendered
        .of_kind("Certificate")
        .find(|certificate| &certificate["spec"]["secretName"] == secret)
        .unwrap_or_else(|| panic!("no Certificate writes Secret {secret}"))
}

fn dns_names(certificate: &Value) -> Vec<&str> {
    array(&certificate["spec"]["dnsNames"])
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn mtls_component_gives_each_service_its_identity_and_keeps_probes_working() {
    for (dir, _) in PLATFORMS {
        let rendered = render_with_components(dir, &["components/mtls"]);
        let mut issuers = BTreeSet::new();
        for workload in rendered.workloads() {
            let name = workload["metadata"]["name"].as_str().unwrap();
            let container = &containers(workload)[0];
            let certificate = certificate_of(&rendered, workload);
            assert!(
                dns_names(certificate).contains(&name),
                "{dir}: {name}'s certificate names it: {:?}",
                dns_names(certificate)
            );
            let usages = array(&certificate["spec"]["usages"]);
            for usage in ["server auth", "client auth"] {
                assert!(usages.iter().any(|u| u == usage), "{name}: {usage}");
            }
            issuers.insert(certificate["spec"]["issuerRef"]["name"].to_string());

            let mount = volume_mount(container, "tls")["mountPath"]
                .as_str()
                .unwrap()
                .to_string();
            for (variable, file) in [
                ("STOWAGE_TLS_CERT", "tls.crt"),
                ("STOWAGE_TLS_KEY", "tls.key"),
                ("STOWAGE_TLS_CA", "ca.crt"),
            ] {
                assert_eq!(
                    env_value(container, variable).map(|v| &v["value"]),
                    Some(&Value::from(format!("{mount}/{file}"))),
                    "{dir}: {name} {variable}"
                );
            }
            // The kubelet's gRPC probe cannot speak TLS.
            for probe in ["readinessProbe", "livenessProbe"] {
                assert!(
                    container[probe].get("grpc").is_none(),
                    "{dir}: {name} {probe} would fail against TLS"
                );
                assert_eq!(container[probe]["tcpSocket"]["port"], "grpc");
            }
        }
        assert_eq!(issuers.len(), 1, "{dir}: one CA signs every service");

        // Callers verify the servers they dial under STOWAGE_TLS_SERVER_NAME (agents are
        // dialled by IP): every server they call must carry that name.
        let orchestrator = rendered.get("Deployment", ORCHESTRATOR);
        let server_name = env_value(&containers(orchestrator)[0], "STOWAGE_TLS_SERVER_NAME")
            .expect("the orchestrator dials agents by IP")["value"]
            .as_str()
            .unwrap()
            .to_string();
        for called in [
            rendered.get("DaemonSet", AGENT),
            rendered.get("Deployment", REPO_MANAGER),
        ] {
            assert!(
                dns_names(certificate_of(&rendered, called)).contains(&server_name.as_str()),
                "{dir}: {} is verified as {server_name}",
                called["metadata"]["name"]
            );
        }
        // The repo-manager dials agents by IP as well (GetAgentInfo) and verifies them under
        // the same name.
        let repo_manager = rendered.get("Deployment", REPO_MANAGER);
        assert_eq!(
            env_value(&containers(repo_manager)[0], "STOWAGE_TLS_SERVER_NAME")
                .map(|variable| &variable["value"]),
            Some(&Value::from(server_name.clone())),
            "{dir}: the repo-manager verifies the agents it dials by IP"
        );
    }
}

#[test]
fn s3_component_sets_the_location_and_mounts_its_credentials() {
    let rendered = render_with_components("overlays/rancher", &["components/s3"]);
    let storage = rendered.config_map_data("stowage-storage");
    assert!(
        storage["STOWAGE_STORAGE_URL"].starts_with("s3://"),
        "{storage:?}"
    );
    let secret = rendered
        .of_kind("Secret")
        .find(|secret| {
            secret["metadata"]["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("stowage-cloud-credentials"))
        })
        .expect("the credentials Secret is generated");
    assert!(secret["data"]["cloud"].is_string(), "key `cloud`: {secret}");
    let secret_name = &secret["metadata"]["name"];
    for workload in rendered.workloads() {
        assert_eq!(
            &volume(workload, "cloud-credentials")["secret"]["secretName"],
            secret_name,
            "{} mounts the generated Secret",
            workload["metadata"]["name"]
        );
    }
    // Both services that open the location read it from the same ConfigMap.
    for name in [ORCHESTRATOR, REPO_MANAGER] {
        let deployment = rendered.get("Deployment", name);
        let env = rendered.effective_env(&containers(deployment)[0]);
        assert_eq!(
            env.get("STOWAGE_STORAGE_URL").cloned().flatten().as_deref(),
            Some(storage["STOWAGE_STORAGE_URL"].as_str()),
            "{name}"
        );
    }
}

/// The properties a schema declares at `path` (e.g. `["spec", "pod"]`).
fn schema_properties<'a>(schema: &'a Value, path: &[&str]) -> &'a serde_json::Map<String, Value> {
    let mut node = schema;
    for part in path {
        node = &node["properties"][part];
    }
    node["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no properties at {path:?}"))
}

#[test]
fn crds_serve_velero_kinds_with_velero_fields_and_printer_columns() {
    let base = render("base");
    let expected = [
        (
            "podvolumebackups.velero.io",
            "PodVolumeBackup",
            vec![
                ".status.phase",
                ".spec.pod.namespace",
                ".spec.pod.name",
                ".spec.volume",
                ".spec.node",
                ".status.snapshotID",
            ],
        ),
        (
            "podvolumerestores.velero.io",
            "PodVolumeRestore",
            vec![
                ".status.phase",
                ".spec.pod.namespace",
                ".spec.pod.name",
                ".spec.volume",
                ".status.progress.bytesDone",
            ],
        ),
        (
            "resticrepositories.velero.io",
            "ResticRepository",
            vec![
                ".spec.volumeNamespace",
                ".status.phase",
                ".status.lastMaintenanceTime",
            ],
        ),
    ];
    for (name, kind, columns) in expected {
        let crd = base.get("CustomResourceDefinition", name);
        assert_eq!(crd["spec"]["group"], "velero.io");
        assert_eq!(crd["spec"]["names"]["kind"], kind);
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        let version = array(&crd["spec"]["versions"])
            .iter()
            .find(|version| version["name"] == "v1")
            .unwrap_or_else(|| panic!("{name}: v1"));
        assert_eq!(version["served"], true);
        assert_eq!(version["storage"], true);
        let schema = &version["schema"]["openAPIV3Schema"];
        let printed: Vec<&str> = array(&version["additionalPrinterColumns"])
            .iter()
            .map(|column| column["jsonPath"].as_str().unwrap())
            .collect();
        for column in columns {
            assert!(printed.contains(&column), "{name}: printer column {column}");
        }
        // Every column shows a field the schema declares (a typo would print nothing).
        for json_path in printed {
            if json_path.starts_with(".metadata.") {
                continue;
            }
            let parts: Vec<&str> = json_path.trim_start_matches('.').split('.').collect();
            let (last, parents) = parts.split_last().unwrap();
            assert!(
                schema_properties(schema, parents).contains_key(*last),
                "{name}: printer column {json_path} is not in the schema"
            );
        }
    }

    let field_sets: [(&str, &[&str], &[&str]); 7] = [
        (
            "podvolumebackups.velero.io",
            &["spec"],
            &["node", "pod", "volume", "repoIdentifier", "tags"],
        ),
        (
            "podvolumebackups.velero.io",
            &["spec", "pod"],
            &["kind", "namespace", "name", "uid"],
        ),
        (
            "podvolumebackups.velero.io",
            &["status"],
            &[
                "phase",
                "snapshotID",
                "path",
                "message",
                "progress",
                "startTimestamp",
                "completionTimestamp",
            ],
        ),
        (
            "podvolumebackups.velero.io",
            &["status", "progress"],
            &["totalBytes", "bytesDone"],
        ),
        (
            "podvolumerestores.velero.io",
            &["spec"],
            &["pod", "volume", "repoIdentifier", "snapshotID"],
        ),
        (
            "resticrepositories.velero.io",
            &["spec"],
            &[
                "volumeNamespace",
                "resticIdentifier",
                "maintenanceFrequency",
            ],
        ),
        (
            "resticrepositories.velero.io",
            &["status"],
            &["phase", "message", "lastMaintenanceTime"],
        ),
    ];
    for (name, path, fields) in field_sets {
        let crd = base.get("CustomResourceDefinition", name);
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let properties = schema_properties(schema, path);
        for field in fields {
            assert!(
                properties.contains_key(*field),
                "{name}: {path:?}.{field} missing"
            );
        }
    }
}

/// (apiGroup, resource, verb) triples a ServiceAccount is granted through any binding.
fn grants(rendered: &Rendered, service_account: &str) -> BTreeSet<(String, String, String, bool)> {
    let mut granted = BTreeSet::new();
    for binding_kind in ["RoleBinding", "ClusterRoleBinding"] {
        for binding in rendered.of_kind(binding_kind) {
            let bound = array(&binding["subjects"]).iter().any(|subject| {
                subject["kind"] == "ServiceAccount"
                    && subject["name"] == service_account
                    && subject["namespace"] == NAMESPACE
            });
            if !bound {
                continue;
            }
            let role_kind = binding["roleRef"]["kind"].as_str().unwrap();
            let role_name = binding["roleRef"]["name"].as_str().unwrap();
            let Some(role) = rendered.find(role_kind, role_name) else {
                // Roles the platform provides (OpenShift's SCC roles).
                continue;
            };
            let cluster_wide = binding_kind == "ClusterRoleBinding";
            for rule in array(&role["rules"]) {
                for group in array(&rule["apiGroups"]) {
                    for resource in array(&rule["resources"]) {
                        for verb in array(&rule["verbs"]) {
                            granted.insert((
                                group.as_str().unwrap().to_string(),
                                resource.as_str().unwrap().to_string(),
                                verb.as_str().unwrap().to_string(),
                                cluster_wide,
                            ));
                        }
                    }
                }
            }
        }
    }
    granted
}

#[test]
fn rbac_gives_each_service_only_what_its_job_needs() {
    for rendered in all_platforms() {
        for role_kind in ["Role", "ClusterRole"] {
            for role in rendered.of_kind(role_kind) {
                for rule in array(&role["rules"]) {
                    // One wildcard is allowed: the orchestrator reads every resource for a
                    // backup's resource tarball (custom resources cannot be named ahead), and
                    // only reads.
                    let read_only = array(&rule["verbs"])
                        .iter()
                        .all(|verb| verb == "get" || verb == "list");
                    if role_kind == "ClusterRole"
                        && role["metadata"]["name"] == ORCHESTRATOR
                        && read_only
                    {
                        continue;
                    }
                    for field in ["apiGroups", "resources", "verbs"] {
                        assert!(
                            !array(&rule[field]).iter().any(|value| value == "*"),
                            "{}: wildcard in {role_kind} {}",
                            rendered.name,
                            role["metadata"]["name"]
                        );
                    }
                }
            }
        }
        // Every workload runs as its own ServiceAccount, which exists.
        for workload in rendered.workloads() {
            let name = workload["metadata"]["name"].as_str().unwrap();
            assert_eq!(
                workload["spec"]["template"]["spec"]["serviceAccountName"], name,
                "{}: {name} has its own ServiceAccount",
                rendered.name
            );
            rendered.get("ServiceAccount", name);
        }

        // The agent works on directories it is told about and never calls the API.
        let agent = grants(&rendered, AGENT);
        assert!(agent.is_empty(), "the agent needs no API access: {agent:?}");
        assert_eq!(
            rendered.get("DaemonSet", AGENT)["spec"]["template"]["spec"]["automountServiceAccountToken"],
            false,
            "{}: no API token in the agent",
            rendered.name
        );
        let has = |grants: &BTreeSet<(String, String, String, bool)>,
                   group: &str,
                   resource: &str,
                   verb: &str| {
            grants
                .iter()
                .any(|(g, r, v, _)| g == group && r == resource && v == verb)
        };

        let repo_manager = grants(&rendered, REPO_MANAGER);
        for verb in ["get", "create", "update"] {
            assert!(
                has(&repo_manager, "", "secrets", verb),
                "repo-manager {verb}s its Secrets"
            );
        }
        assert!(has(
            &repo_manager,
            "velero.io",
            "resticrepositories",
            "create"
        ));
        assert!(
            repo_manager
                .iter()
                .all(|(_, _, _, cluster_wide)| !cluster_wide),
            "the repo-manager works in its own namespace only: {repo_manager:?}"
        );
        assert!(!has(&repo_manager, "", "pods", "create"));
        // Whether the pod holding a restic lock still exists (a gone pod's lock is stale).
        assert!(
            has(&repo_manager, "", "pods", "get"),
            "repo-manager gets pods"
        );
        for verb in ["list", "delete", "update"] {
            assert!(
                !has(&repo_manager, "", "pods", verb),
                "repo-manager may {verb} pods"
            );
        }

        // Leader election: each reads, creates and patches (server-side apply) its Lease, in
        // the stowage namespace only, and never deletes one.
        for service in [ORCHESTRATOR, REPO_MANAGER] {
            let granted = grants(&rendered, service);
            for verb in ["get", "create", "patch"] {
                assert!(
                    granted
                        .iter()
                        .any(|(g, r, v, cluster_wide)| g == "coordination.k8s.io"
                            && r == "leases"
                            && v == verb
                            && !cluster_wide),
                    "{service} {verb}s its Lease in its namespace: {granted:?}"
                );
            }
            assert!(
                !granted.iter().any(|(g, r, v, _)| g == "coordination.k8s.io"
                    && r == "leases"
                    && v == "delete"),
                "{service} may delete Leases"
            );
            // The leader label on its own Pod: get and patch, in the stowage namespace only.
            for verb in ["get", "patch"] {
                assert!(
                    granted.iter().any(|(g, r, v, cluster_wide)| g.is_empty()
                        && r == "pods"
                        && v == verb
                        && !cluster_wide),
                    "{service} {verb}s its own Pod in its namespace: {granted:?}"
                );
            }
            assert!(
                !granted.iter().any(|(g, r, v, cluster_wide)| g.is_empty()
                    && r == "pods"
                    && v == "patch"
                    && *cluster_wide),
                "{service} may patch pods in every namespace: {granted:?}"
            );
        }

        let orchestrator = grants(&rendered, ORCHESTRATOR);
        for (group, resource, verb) in [
            ("", "pods", "list"),
            ("", "pods", "create"),
            ("", "persistentvolumeclaims", "get"),
            ("", "persistentvolumeclaims", "list"),
            ("", "persistentvolumeclaims", "create"),
            ("", "namespaces", "create"),
            ("", "configmaps", "list"),
            ("apps", "replicasets", "get"),
            // A pod's backup hooks run through pods/exec (a WebSocket GET: `create` since
            // Kubernetes 1.30, `get` before).
            ("", "pods/exec", "create"),
            ("", "pods/exec", "get"),
        ] {
            assert!(
                has(&orchestrator, group, resource, verb),
                "orchestrator {verb} {resource}"
            );
        }
        // Backups must not be able to destroy what they protect. Pods are the one exception,
        // for `delete` alone: a data-only restore deletes the restore pod it started.
        assert!(
            has(&orchestrator, "", "pods", "delete"),
            "orchestrator delete pods"
        );
        for resource in ["pods", "persistentvolumeclaims", "namespaces"] {
            for verb in ["delete", "deletecollection", "update", "patch"] {
                if (resource, verb) == ("pods", "delete") {
                    continue;
                }
                // Patching pods is granted in the stowage namespace only (its own Pod's
                // leader label, asserted above), never where the backed-up pods are.
                let granted = if (resource, verb) == ("pods", "patch") {
                    orchestrator.iter().any(|(g, r, v, cluster_wide)| {
                        g.is_empty() && r == resource && v == verb && *cluster_wide
                    })
                } else {
                    has(&orchestrator, "", resource, verb)
                };
                assert!(!granted, "orchestrator may {verb} {resource}");
            }
        }
        for resource in ["podvolumebackups", "podvolumerestores"] {
            assert!(has(&orchestrator, "velero.io", resource, "create"));
        }
        // It reads Secrets (and everything else) only to keep them in a backup's tarball;
        // repository keys are the repo-manager's to write.
        assert!(
            !orchestrator.iter().any(|(_, resource, verb, _)| {
                (resource == "secrets" || resource == "*") && verb != "get" && verb != "list"
            }),
            "the orchestrator may change Secrets: {orchestrator:?}"
        );
        assert!(
            has(&orchestrator, "*", "*", "list"),
            "the orchestrator lists every resource for the resource tarball"
        );
    }
}

/// Both singletons run as two replicas that elect a leader: the standby must be live but not
/// ready (probes), never both on one node when avoidable, never both gone in a drain, a new
/// one started before an old one stops, and each named in the Lease by its pod name.
#[test]
fn orchestrator_and_repo_manager_run_two_replicas_that_elect_a_leader() {
    for rendered in all_platforms() {
        for name in [ORCHESTRATOR, REPO_MANAGER] {
            let deployment = rendered.get("Deployment", name);
            let spec = &deployment["spec"];
            assert_eq!(spec["replicas"], 2, "{}: {name} replicas", rendered.name);
            assert_eq!(spec["strategy"]["type"], "RollingUpdate", "{name}");
            assert_eq!(
                spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
                "{name}"
            );
            assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 1, "{name}");
            let pod_labels = &spec["template"]["metadata"]["labels"];
            let anti = &spec["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
            assert!(
                array(anti).iter().any(|term| {
                    let term = &term["podAffinityTerm"];
                    term["topologyKey"] == "kubernetes.io/hostname"
                        && selects(&term["labelSelector"], pod_labels)
                }),
                "{name}: its replicas prefer different nodes: {anti}"
            );
            let budget = rendered.get("PodDisruptionBudget", name);
            assert_eq!(budget["spec"]["minAvailable"], 1, "{name}");
            assert!(
                selects(&budget["spec"]["selector"], pod_labels),
                "{name}: the budget selects its pods"
            );
            let container = &containers(deployment)[0];
            let env = rendered.effective_env(container);
            assert_eq!(
                env.get("STOWAGE_LEADER_ELECT")
                    .cloned()
                    .flatten()
                    .as_deref(),
                Some("true"),
                "{name}: leader election on"
            );
            for (variable, field) in [
                ("POD_NAME", "metadata.name"),
                ("POD_NAMESPACE", "metadata.namespace"),
            ] {
                assert_eq!(
                    env_value(container, variable)
                        .map(|value| &value["valueFrom"]["fieldRef"]["fieldPath"]),
                    Some(&Value::from(field)),
                    "{name}: {variable} from the downward API"
                );
            }
            // Ready only when its own service is SERVING (a standby reports it NOT_SERVING);
            // live on the process-wide status, which a standby reports SERVING.
            assert!(container["readinessProbe"]["grpc"]["service"].is_string());
            assert!(container["livenessProbe"]["grpc"]["service"].is_null());
        }
    }
}

#[test]
fn restore_helper_config_is_the_one_velero_users_know() {
    let base = render("base");
    let config_map = base
        .of_kind("ConfigMap")
        .find(|config_map| {
            config_map["metadata"]["labels"]["velero.io/restic"] == "RestoreItemAction"
        })
        .expect("a ConfigMap labelled velero.io/restic: RestoreItemAction");
    assert_eq!(config_map["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        config_map["metadata"]["labels"]["velero.io/plugin-config"],
        ""
    );
    let data = config_map["data"].as_object().unwrap();
    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["image", "cpuRequest", "memRequest", "cpuLimit", "memLimit"])
    );
    assert_eq!(
        data["image"],
        stowage_images::Image::RestoreHelper.reference(),
        "set by the base's images:"
    );
}

#[test]
fn monitoring_component_scrapes_every_service_and_ships_its_rules_and_dashboard() {
    for (dir, _) in PLATFORMS {
        let rendered = render_with_components(dir, &["components/monitoring"]);
        // The PodMonitor selects the pods of all three services, on their metrics port.
        let monitor = rendered.get("PodMonitor", "stowage");
        assert_eq!(monitor["metadata"]["namespace"], NAMESPACE);
        let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
        assert_eq!(endpoint["path"], "/metrics");
        assert_eq!(
            endpoint["honorLabels"], true,
            "the per-volume series keep their own namespace and pod labels"
        );
        // Standbys too: their metrics are reached on the Pod, not through the Service that
        // selects the leader alone.
        let selector = &monitor["spec"]["selector"];
        assert!(
            selector["matchLabels"].get(LEADER_LABEL).is_none()
                && !array(&selector["matchExpressions"])
                    .iter()
                    .any(|expression| expression["key"] == LEADER_LABEL),
            "{}: the PodMonitor scrapes the leader only",
            rendered.name
        );
        let names: BTreeSet<&str> =
            array(&monitor["spec"]["selector"]["matchExpressions"][0]["values"])
                .iter()
                .filter_map(Value::as_str)
                .collect();
        for workload in rendered.workloads() {
            let labels = &workload["spec"]["template"]["metadata"]["labels"];
            let name = labels["app.kubernetes.io/name"]
                .as_str()
                .unwrap_or_default();
            assert!(
                names.contains(name),
                "{}: the PodMonitor does not select {name}",
                rendered.name
            );
            let serves_metrics = containers(workload).iter().any(|container| {
                array(&container["ports"])
                    .iter()
                    .any(|port| port["name"] == endpoint["port"])
            });
            assert!(
                serves_metrics,
                "{}: {name} has no port {}",
                rendered.name, endpoint["port"]
            );
        }
        let rule = rendered.get("PrometheusRule", "stowage");
        assert_eq!(rule["metadata"]["namespace"], NAMESPACE);
        let alerts: BTreeSet<&str> = array(&rule["spec"]["groups"])
            .iter()
            .flat_map(|group| array(&group["rules"]))
            .filter_map(|rule| rule["alert"].as_str())
            .collect();
        for alert in [
            "StowageVolumeBackupFailed",
            "StowageVolumeBackupMissing",
            "StowageRepositoryCheckFailed",
            "StowageAgentDown",
            "StowageRepositoryCheckOverdue",
            "StowageRepositoryPruneOverdue",
        ] {
            assert!(
                alerts.contains(alert),
                "{}: no alert {alert}",
                rendered.name
            );
        }
        // The dashboard reaches Grafana's sidecar unchanged, under its fixed name.
        let dashboard = rendered.get("ConfigMap", "stowage-grafana-dashboard");
        assert_eq!(dashboard["metadata"]["namespace"], NAMESPACE);
        assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
        let json: Value = serde_json::from_str(
            dashboard["data"]["stowage.json"]
                .as_str()
                .expect("the dashboard JSON"),
        )
        .expect("the dashboard is JSON");
        assert_eq!(json["uid"], "stowage");
        assert!(!array(&json["panels"]).is_empty());
    }
}

/// Names of the image stages and the binaries the Dockerfile copies.
fn dockerfile() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = std::fs::read_to_string(workspace_root().join("deploy/images/Dockerfile"))
        .expect("deploy/images/Dockerfile");
    let stages = text
        .lines()
        .filter(|line| line.starts_with("FROM "))
        .filter_map(|line| line.split(" AS ").nth(1))
        .map(|stage| stage.trim().to_string())
        .collect();
    let binaries = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| {
            line.split(|c: char| c.is_whitespace() || c == '"' || c == '[' || c == ']' || c == ',')
        })
        .filter(|word| word.contains('/'))
        .filter_map(|word| word.rsplit('/').next())
        .filter(|word| word.starts_with("stowage-"))
        .map(String::from)
        .collect();
    (stages, binaries)
}

#[test]
fn images_are_built_from_the_workspace_binaries() {
    let (stages, binaries) = dockerfile();
    // Every binary an image copies is one the workspace builds (and CI builds).
    for name in &binaries {
        binary(name);
    }
    // Every image a manifest names has a stage, and copies the binary it runs.
    let mut images = BTreeSet::new();
    for rendered in all_platforms() {
        for workload in rendered.workloads() {
            for container in containers(workload) {
                images.insert(binary_of(container));
            }
        }
        let restore_helper = rendered.config_map_data("restic-restore-action-config");
        images.insert(binary_of(
            &serde_json::json!({ "image": restore_helper["image"] }),
        ));
    }
    for image in images {
        let stage = image.trim_start_matches("stowage-");
        assert!(
            stages.contains(stage),
            "no Dockerfile stage {stage}: {stages:?}"
        );
        assert!(
            binaries.contains(&image),
            "the Dockerfile does not build {image}"
        );
    }
}

/// Every documented image build, `docker build … --target <stage> -t <image> .`, in the
/// Dockerfile's header and the install docs: (where, stage, image).
fn documented_builds() -> Vec<(String, String, String)> {
    let mut builds = Vec::new();
    for file in [
        "deploy/images/Dockerfile",
        "deploy/README.md",
        "docs/install.md",
    ] {
        let text = std::fs::read_to_string(workspace_root().join(file))
            .unwrap_or_else(|error| panic!("reading {file}: {error}"));
        for line in text.lines().filter(|line| line.contains("docker build ")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |flag: &str| {
                words
                    .iter()
                    .position(|word| *word == flag)
                    .and_then(|at| words.get(at + 1))
                    .map(|word| word.to_string())
                    .unwrap_or_else(|| panic!("{file}: `{line}` has no {flag}"))
            };
            builds.push((file.to_string(), after("--target"), after("-t")));
        }
    }
    builds
}

/// The orchestrator's `--restore-helper-image` default, as its `--help` prints it.
fn orchestrator_default_helper_image() -> String {
    let text = help(ORCHESTRATOR);
    let flag = text
        .find("--restore-helper-image")
        .expect("the orchestrator has --restore-helper-image");
    let rest = &text[flag..];
    let start = rest.find("[default: ").expect("a default helper image") + "[default: ".len();
    let end = rest[start..].find(']').expect("closing bracket");
    rest[start..start + end].to_string()
}

#[test]
fn the_restore_helper_image_the_orchestrator_sets_is_one_the_dockerfile_builds() {
    use stowage_images::{Image, restore_helper_image};
    let (stages, _) = dockerfile();
    let builds = documented_builds();
    // Each documented build names a stage and tags it as crates/images names its image.
    for (file, target, image) in &builds {
        assert!(
            stages.contains(target),
            "{file}: no Dockerfile stage {target}: {stages:?}"
        );
        let named = Image::ALL
            .into_iter()
            .find(|known| known.target() == target)
            .unwrap_or_else(|| panic!("{file}: stage {target} is no image of crates/images"));
        assert_eq!(*image, named.reference(), "{file}: build of {target}");
    }
    let produced: BTreeSet<&str> = builds.iter().map(|(_, _, image)| image.as_str()).collect();
    for image in Image::ALL {
        assert!(
            produced.contains(image.reference().as_str()),
            "no documented build of {}: {produced:?}",
            image.reference()
        );
    }
    let default_image = orchestrator_default_helper_image();
    assert!(
        produced.contains(restore_helper_image(None, &default_image).as_str()),
        "with no image in the ConfigMap the orchestrator sets {}, which no build produces: {produced:?}",
        restore_helper_image(None, &default_image)
    );
    for rendered in all_platforms() {
        let config = rendered.config_map_data("restic-restore-action-config");
        // What the orchestrator gives a recreated pod's init container with this ConfigMap.
        let helper = restore_helper_image(config.get("image").map(String::as_str), &default_image);
        assert!(
            produced.contains(helper.as_str()),
            "{}: the orchestrator would set the helper image {helper}, which no build produces: {produced:?}",
            rendered.name
        );
        for workload in rendered.workloads() {
            for container in containers(workload) {
                let image = container["image"]
                    .as_str()
                    .expect("containers have an image");
                assert!(
                    produced.contains(image),
                    "{}: {} runs {image}, which no build produces: {produced:?}",
                    rendered.name,
                    workload["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn a_users_images_entry_moves_the_restore_helper_with_the_other_images() {
    // One `images:` entry in a kustomization on top of the base changes where the helper is
    // pulled from, as it does for the services' containers.
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().canonicalize().expect("temp dir path");
    let base = kustomize_dir().join("base").canonicalize().expect("base");
    std::fs::write(
        root.join("kustomization.yaml"),
        format!(
            "resources:\n  - {}\nimages:\n  - name: ghcr.io/stowage/stowage-restore-helper\n    newName: registry.example/stowage-restore-helper\n",
            relative_path(&root, &base).display()
        ),
    )
    .expect("writing kustomization");
    let rendered = Rendered {
        name: "base with images:".into(),
        objects: kustomize(&root),
    };
    let config = rendered.config_map_data("restic-restore-action-config");
    assert_eq!(
        config["image"],
        format!(
            "registry.example/stowage-restore-helper:{}",
            stowage_images::VERSION
        )
    );
}

/// What `<binary> --help` prints, cached.
fn help(binary_name: &str) -> String {
    static CACHE: OnceLock<Mutex<BTreeMap<String, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(text) = cache.lock().unwrap().get(binary_name) {
        return text.clone();
    }
    let output = Command::new(binary(binary_name))
        .arg("--help")
        .env_clear()
        .output()
        .unwrap_or_else(|error| panic!("running {binary_name} --help: {error}"));
    assert!(output.status.success(), "{binary_name} --help failed");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    cache
        .lock()
        .unwrap()
        .insert(binary_name.to_string(), text.clone());
    text
}

/// Whether `--help` lists environment variable `name`: clap prints `[env: NAME=]`, or
/// `[env: NAME]` for flags whose values it hides (keys).
fn reads_env(help: &str, name: &str) -> bool {
    help.contains(&format!("[env: {name}=")) || help.contains(&format!("[env: {name}]"))
}

/// Settings the binary reads itself (as opposed to restic's or the OTel SDK's variables).
fn is_stowage_setting(name: &str) -> bool {
    name.starts_with("STOWAGE_") || ["NODE_NAME", "POD_NAME", "POD_NAMESPACE"].contains(&name)
}

#[test]
fn every_setting_a_container_is_given_is_a_flag_of_its_binary() {
    let mut checked = 0;
    for rendered in all_renderings() {
        for workload in rendered.workloads() {
            for container in containers(workload) {
                let binary_name = binary_of(container);
                let help = help(&binary_name);
                for name in rendered.effective_env(container).keys() {
                    if !is_stowage_setting(name) {
                        continue;
                    }
                    assert!(
                        reads_env(&help, name),
                        "{}: {} sets {name}, which {binary_name} does not read:\n{help}",
                        rendered.name,
                        container["name"]
                    );
                    checked += 1;
                }
                for arg in array(&container["args"])
                    .iter()
                    .chain(array(&container["command"]))
                {
                    let arg = arg.as_str().unwrap();
                    if let Some(flag) = arg.strip_prefix("--") {
                        let flag = flag.split('=').next().unwrap();
                        assert!(
                            help.contains(&format!("--{flag}")),
                            "{}: {binary_name} has no flag --{flag}",
                            rendered.name
                        );
                    }
                }
            }
        }
    }
    assert!(checked > 0, "no setting was checked");
}

#[test]
fn help_check_rejects_a_setting_the_binary_does_not_read() {
    // The check above is only as good as the `[env: …]` lines clap prints.
    let help = help(AGENT);
    assert!(reads_env(&help, "STOWAGE_PODS_ROOT"), "{help}");
    assert!(!reads_env(&help, "STOWAGE_PODS"), "a prefix is not a match");
    assert!(!reads_env(&help, "STOWAGE_NO_SUCH_SETTING"));
}

/// The offline schema validator (PyPI `kubernetes-validate`, installed by `scripts/install-deps`).
/// Its absence fails the test: a check that quietly does not run proves nothing.
fn kubernetes_validate() -> &'static str {
    let found = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "kubernetes-validate is not installed: run scripts/install-deps (pip install kubernetes-validate)"
    );
    "kubernetes-validate"
}

/// Runs the validator over `renderings`, each written to its own file (so the report names
/// it), in one process: loading the schemas is the slow part.
fn validate(validator: &str, renderings: &[Rendered], dir: &Path) -> Result<(), String> {
    let mut paths = Vec::new();
    for (index, rendered) in renderings.iter().enumerate() {
        let file_name = format!(
            "{index}-{}.yaml",
            rendered
                .name
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        let path = dir.join(file_name);
        let text = rendered
            .objects
            .iter()
            .map(|object| serde_yaml::to_string(object).expect("re-serialising"))
            .collect::<Vec<_>>()
            .join("---\n");
        std::fs::write(&path, text).expect("writing rendered manifests");
        paths.push(path);
    }
    let output = Command::new(validator)
        .args(["--strict", "--quiet", "--no-warn"])
        .args(&paths)
        .output()
        .expect("running the validator");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[test]
fn rendered_manifests_match_the_kubernetes_schemas() {
    let validator = kubernetes_validate();
    let dir = tempfile::tempdir().unwrap();
    if let Err(report) = validate(validator, &all_renderings(), dir.path()) {
        panic!("rendered manifests do not validate:\n{report}");
    }
    // The validator does reject a malformed object (a misspelt field in a probe).
    let mut broken = render("base");
    let agent = broken
        .objects
        .iter_mut()
        .find(|object| object["kind"] == "DaemonSet")
        .unwrap();
    agent["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] =
        serde_json::json!({ "port": 8082 });
    assert!(
        validate(validator, &[broken], dir.path()).is_err(),
        "the validator accepted a misspelt field"
    );
}
