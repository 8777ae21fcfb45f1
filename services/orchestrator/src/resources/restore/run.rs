//! Restores the objects of a backup's resource tarball through an [`ObjectApi`], in restore
//! order: filters, the skip rules, the existing-resource policy, custom resources after their
//! CRD is Established, and ownership re-pointed at the restored owners.
//!
//! Ownership: every object is created without its ownerReferences (they name the old owners'
//! uids, and the garbage collector deletes an object whose controller uid does not exist). As
//! soon as an owner exists (created, updated or already there), the objects this restore
//! created that it owned get their ownerReferences back with the owner's new uid. Owners come
//! after their dependents in Velero's order (pods, then ReplicaSets, then Deployments), so a
//! ReplicaSet finds its pods there and a Deployment its ReplicaSet, as a controller adopting
//! orphans would. A pod that a controller owns and that has no volume to restore is not
//! created: its restored controller makes it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use serde_json::{Value, json};
use stowage_velero_format::BackupResources;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    api::{ObjectApi, ObjectError},
    plan::{self, Context},
    selector::LabelSelector,
};
use crate::{
    error::Error,
    resources::{api::ApiResource, filter::ResourceFilter},
};

/// What to do with an object that already exists (Velero's `--existing-resource-policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExistingPolicy {
    /// Leave it and report it.
    #[default]
    None,
    /// Replace it by the backed-up content, keeping its resourceVersion and owners.
    Update,
}

impl ExistingPolicy {
    /// `none` (or empty) and `update`, Velero's names.
    pub fn parse(text: &str) -> Result<ExistingPolicy, Error> {
        match text {
            "" | "none" => Ok(ExistingPolicy::None),
            "update" => Ok(ExistingPolicy::Update),
            other => Err(Error::InvalidArgument {
                what: "existing resource policy",
                value: other.to_string(),
                reason: "must be `none` or `update`".to_string(),
            }),
        }
    }
}

/// What one restore restores.
#[derive(Debug, Clone)]
pub struct Options {
    /// Source namespaces to restore; empty means all. Objects of other namespaces are not
    /// looked at (and not reported).
    pub included_namespaces: Vec<String>,
    pub namespace_mapping: BTreeMap<String, String>,
    pub include_resources: Vec<String>,
    pub exclude_resources: Vec<String>,
    pub label_selector: LabelSelector,
    /// `(source namespace, claim)` of the claims whose data the restore writes from restic
    /// snapshots: their PersistentVolumes are not restored (Velero's rule: the old volume's
    /// storage went with it, so the claim is provisioned afresh and filled by restic).
    pub restic_claims: BTreeSet<(String, String)>,
    pub policy: ExistingPolicy,
    /// How long a created CustomResourceDefinition may take to be Established.
    pub crd_timeout: Duration,
    /// How long a namespace restored into may take to finish being deleted (Terminating).
    pub namespace_timeout: Duration,
    pub poll_interval: Duration,
}

/// What the restore did with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    SkippedExists,
    /// Not restored on purpose; the message says why.
    Skipped,
    Failed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// `deployments.apps`, `configmaps`.
    pub resource: String,
    /// The backup's namespace; `None` for cluster-scoped objects.
    pub source_namespace: Option<String>,
    /// After mapping; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    pub name: String,
    pub outcome: Outcome,
    pub message: String,
    /// A pod the caller dressed for its restored volumes.
    pub has_volumes: bool,
}

impl Handled {
    /// `configmaps/shop/cfg` or `persistentvolumes/pv-1`.
    pub fn path(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{}/{namespace}/{}", self.resource, self.name),
            None => format!("{}/{}", self.resource, self.name),
        }
    }
}

/// The caller's part for pods: given the source namespace, the name and the prepared pod,
/// adds what restoring its volumes needs (the restore helper) and returns `Some(Ok(()))`;
/// `None` when the pod has no volume to restore; `Some(Err(reason))` when it cannot be dressed.
pub type DressPod<'a> =
    dyn Fn(&str, &str, &mut Value) -> Option<Result<(), String>> + Send + Sync + 'a;

/// A created object waiting for its owners: where it is and its backed-up ownerReferences.
#[derive(Clone)]
struct Dependent {
    resource: ApiResource,
    namespace: Option<String>,
    name: String,
    owners: Vec<Value>,
    /// Index of its entry in the results.
    handled: usize,
}

struct Restorer<'a> {
    api: &'a dyn ObjectApi,
    options: &'a Options,
    log: &'a (dyn Fn(&str, String) + Send + Sync),
    served: Vec<ApiResource>,
    filter: ResourceFilter,
    /// A CRD was created or updated since discovery was read.
    discovery_stale: bool,
    /// Old uid → uid in the cluster now, of every owner-capable object handled.
    new_uids: HashMap<String, String>,
    /// Old owner uid → created objects it owned.
    waiting: HashMap<String, Vec<Dependent>>,
    namespaces_ready: BTreeSet<String>,
    /// Namespaces that stayed Terminating past the bound: why their objects fail.
    namespaces_failed: BTreeMap<String, String>,
    /// Ends a wait for a Terminating namespace early.
    cancel: &'a CancellationToken,
    /// PersistentVolumes this restore created.
    volumes_created: BTreeSet<String>,
    handled: Vec<Handled>,
}

/// Restores `tarball`'s objects; one entry per object looked at, in the order handled. Only a
/// discovery that cannot be read at all fails the whole call; each object's failure is its
/// own entry. Stops between objects once `cancel` fires.
pub async fn restore_resources(
    api: &dyn ObjectApi,
    tarball: &BackupResources,
    options: &Options,
    dress: &DressPod<'_>,
    log: &(dyn Fn(&str, String) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<Vec<Handled>, Error> {
    let served = api
        .served()
        .await
        .map_err(|error| Error::Failed(format!("reading the API server's discovery: {error}")))?;
    let filter = ResourceFilter::new(
        &options.include_resources,
        &options.exclude_resources,
        &served,
    );
    let mut restorer = Restorer {
        api,
        options,
        log,
        served,
        filter,
        discovery_stale: false,
        new_uids: HashMap::new(),
        waiting: HashMap::new(),
        namespaces_ready: BTreeSet::new(),
        namespaces_failed: BTreeMap::new(),
        cancel,
        volumes_created: BTreeSet::new(),
        handled: Vec::new(),
    };
    let claims = restorer.claims_to_restore(tarball);
    let order = plan::restore_order(tarball.objects.keys().map(|key| key.resource.as_str()));
    for resource in &order {
        for (key, object) in tarball.of_resource(resource) {
            if cancel.is_cancelled() {
                return Ok(restorer.handled);
            }
            if let Some(namespace) = &key.namespace
                && !options.included_namespaces.is_empty()
                && !options.included_namespaces.contains(namespace)
            {
                continue;
            }
            if resource == stowage_velero_format::resources::NAMESPACES
                && !options.included_namespaces.is_empty()
                && !options.included_namespaces.contains(&key.name)
            {
                continue;
            }
            restorer
                .restore_one(
                    resource,
                    key.namespace.as_deref(),
                    &key.name,
                    object,
                    &claims,
                    dress,
                )
                .await;
        }
    }
    Ok(restorer.handled)
}

impl Restorer<'_> {
    fn map(&self, namespace: &str) -> String {
        self.options
            .namespace_mapping
            .get(namespace)
            .cloned()
            .unwrap_or_else(|| namespace.to_string())
    }

    /// Why the filters leave `object` of `resource` out, if they do.
    fn filtered(&self, resource: &str, object: &Value) -> Option<String> {
        if !self.filter.includes(resource) {
            return Some("left out by the restore's resource filter".to_string());
        }
        if !self.options.label_selector.matches(object) {
            return Some(format!(
                "its labels do not meet the restore's selector {}",
                self.options.label_selector
            ));
        }
        None
    }

    /// `(source namespace, name)` of every claim the restore will create or find.
    fn claims_to_restore(&self, tarball: &BackupResources) -> BTreeSet<(String, String)> {
        tarball
            .persistent_volume_claims()
            .filter(|(key, object)| {
                let namespace = key.namespace.clone().unwrap_or_default();
                (self.options.included_namespaces.is_empty()
                    || self.options.included_namespaces.contains(&namespace))
                    && self.filtered(&key.resource, object).is_none()
            })
            .map(|(key, _)| (key.namespace.clone().unwrap_or_default(), key.name.clone()))
            .collect()
    }

    fn record(
        &mut self,
        resource: &str,
        source_namespace: Option<&str>,
        name: &str,
        outcome: Outcome,
        message: String,
    ) -> usize {
        let handled = Handled {
            resource: resource.to_string(),
            source_namespace: source_namespace.map(str::to_string),
            namespace: source_namespace.map(|namespace| self.map(namespace)),
            name: if resource == stowage_velero_format::resources::NAMESPACES {
                self.map(name)
            } else {
                name.to_string()
            },
            outcome,
            message,
            has_volumes: false,
        };
        // A namespace restored into is expected to exist (restoring in place); only other
        // objects that exist are worth a warning.
        let level = match outcome {
            Outcome::Failed => "error",
            Outcome::SkippedExists if resource != stowage_velero_format::resources::NAMESPACES => {
                "warning"
            }
            _ => "info",
        };
        let verb = match outcome {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::SkippedExists => "exists, left as it is",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
        };
        let mut line = format!("{} {verb}", handled.path());
        if !handled.message.is_empty() {
            line.push_str(": ");
            line.push_str(&handled.message);
        }
        (self.log)(level, line);
        self.handled.push(handled);
        self.handled.len() - 1
    }

    /// The served resource `resource` at the object's own version; discovery is read again
    /// once when a CRD was created since it was last read.
    async fn resolve(&mut self, resource: &str, object: &Value) -> Option<ApiResource> {
        let find = |served: &[ApiResource]| {
            served
                .iter()
                .find(|r| r.group_resource() == resource)
                .cloned()
        };
        let mut found = find(&self.served);
        if found.is_none() && self.discovery_stale {
            match self.api.served().await {
                Ok(served) => {
                    self.filter = ResourceFilter::new(
                        &self.options.include_resources,
                        &self.options.exclude_resources,
                        &served,
                    );
                    self.served = served;
                    self.discovery_stale = false;
                    found = find(&self.served);
                }
                Err(error) => (self.log)(
                    "warning",
                    format!("reading the API server's discovery again: {error}"),
                ),
            }
        }
        let mut found = found?;
        // The tarball's object is at the version it was backed up at; sent as it is.
        if let Some((group, version)) = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(|api_version| api_version.rsplit_once('/').unwrap_or(("", api_version)))
            && group == found.group
        {
            found.version = version.to_string();
        }
        Some(found)
    }

    /// Makes sure namespace `namespace` exists before objects are created in it: one the
    /// tarball does not hold (or the filters left out) is created bare, once a deletion of it
    /// that is under way has ended (see [`Restorer::settle_namespace`]).
    async fn ensure_namespace(&mut self, namespace: &str) -> Result<(), String> {
        if self.namespaces_ready.contains(namespace) {
            return Ok(());
        }
        let namespaces = self
            .served
            .iter()
            .find(|r| r.group.is_empty() && r.plural == "namespaces")
            .cloned()
            .ok_or("the API server does not serve namespaces")?;
        if !self.settle_namespace(&namespaces, namespace).await? {
            let bare =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
            match self.api.create(&namespaces, None, &bare).await {
                Ok(_) => (self.log)(
                    "info",
                    format!("namespaces/{namespace} created for the restored objects"),
                ),
                Err(error) if error.already_exists() => {}
                Err(error) => {
                    return Err(format!(
                        "creating namespace {namespace}: {}",
                        error.reason_text()
                    ));
                }
            }
        }
        self.namespaces_ready.insert(namespace.to_string());
        Ok(())
    }

    /// Whether namespace `namespace` exists and takes objects. One being deleted (Terminating:
    /// the API server refuses new content in it, and a create of it is AlreadyExists until the
    /// namespace controller has emptied and removed it) is waited for, up to
    /// `namespace_timeout`, with progress in the log; then it is gone (`false`). Still there
    /// past the bound, it is an error naming it, remembered so that every object of the
    /// namespace fails with it at once (a read that fails is this object's error only).
    async fn settle_namespace(
        &mut self,
        namespaces: &ApiResource,
        namespace: &str,
    ) -> Result<bool, String> {
        if let Some(reason) = self.namespaces_failed.get(namespace) {
            return Err(reason.clone());
        }
        let timeout = self.options.namespace_timeout;
        let started = Instant::now();
        let mut next_progress = started;
        loop {
            let live = match self.api.get(namespaces, None, namespace).await {
                Ok(live) => live,
                Err(error) => {
                    break Err(format!(
                        "reading namespace {namespace}: {}",
                        error.reason_text()
                    ));
                }
            };
            let Some(live) = live else { break Ok(false) };
            if !terminating(&live) {
                if next_progress > started {
                    (self.log)("info", format!("namespace {namespace} is usable again"));
                }
                break Ok(true);
            }
            let waited = Instant::now() - started;
            if waited >= timeout {
                let reason = format!(
                    "namespace {namespace} is still being deleted (Terminating) after {}s; \
                     its objects cannot be created until the deletion ends (look for \
                     finalizers left on it or on its objects), then restore again",
                    timeout.as_secs()
                );
                self.namespaces_failed
                    .insert(namespace.to_string(), reason.clone());
                break Err(reason);
            }
            if Instant::now() >= next_progress {
                // The first line says what the wait is for; the next ones how long it lasts.
                let line = if next_progress == started {
                    format!(
                        "namespace {namespace} is being deleted (Terminating); waiting up to {}s \
                         until it is gone to create it again",
                        timeout.as_secs()
                    )
                } else {
                    format!(
                        "namespace {namespace} is still Terminating after {}s",
                        waited.as_secs()
                    )
                };
                (self.log)("info", line);
                next_progress += NAMESPACE_PROGRESS_EVERY;
            }
            tokio::select! {
                () = tokio::time::sleep(self.options.poll_interval) => {}
                () = self.cancel.cancelled() => {
                    break Err(format!(
                        "the restore was cancelled while namespace {namespace} was Terminating"
                    ));
                }
            }
        }
    }

    async fn restore_one(
        &mut self,
        resource: &str,
        source_namespace: Option<&str>,
        name: &str,
        object: &Value,
        claims: &BTreeSet<(String, String)>,
        dress: &DressPod<'_>,
    ) {
        let skip = |reason: String| (Outcome::Skipped, reason);
        let decision = if let Some(reason) = plan::never_restored(resource, object) {
            Some(skip(reason))
        } else if let Some(reason) = self.filtered(resource, object) {
            Some(skip(reason))
        } else if resource == stowage_velero_format::resources::PERSISTENT_VOLUMES {
            let claim = object.pointer("/spec/claimRef").map(|claim| {
                let text = |key: &str| {
                    claim
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                (text("namespace"), text("name"))
            });
            match claim {
                Some(claim) if !claim.1.is_empty() && !claims.contains(&claim) => Some(skip(
                    format!("its claim {}/{} is not restored", claim.0, claim.1),
                )),
                Some(claim) if self.options.restic_claims.contains(&claim) => Some(skip(format!(
                    "the data of its claim {}/{} is restored from a restic snapshot into a \
                     freshly provisioned volume",
                    claim.0, claim.1
                ))),
                _ => None,
            }
        } else {
            None
        };
        if let Some((outcome, message)) = decision {
            self.record(resource, source_namespace, name, outcome, message);
            return;
        }

        let volume_restored = resource
            == stowage_velero_format::resources::PERSISTENT_VOLUME_CLAIMS
            && object
                .pointer("/spec/volumeName")
                .and_then(Value::as_str)
                .is_some_and(|volume| self.volumes_created.contains(volume));
        let context = Context {
            namespace_mapping: &self.options.namespace_mapping,
            volume_restored,
        };
        let mut prepared = plan::prepare(resource, object, &context);
        let mut has_volumes = false;
        if resource == stowage_velero_format::resources::PODS {
            match dress(source_namespace.unwrap_or_default(), name, &mut prepared) {
                Some(Ok(())) => has_volumes = true,
                Some(Err(reason)) => {
                    let index =
                        self.record(resource, source_namespace, name, Outcome::Failed, reason);
                    self.handled[index].has_volumes = true;
                    return;
                }
                None => {
                    if let Some((kind, owner, _)) = plan::controller_of(object) {
                        self.record(
                            resource,
                            source_namespace,
                            name,
                            Outcome::Skipped,
                            format!("owned by {kind} {owner}, which recreates it; it has no volume to restore"),
                        );
                        return;
                    }
                }
            }
        }

        let Some(api_resource) = self.resolve(resource, object).await else {
            self.record(
                resource,
                source_namespace,
                name,
                Outcome::Failed,
                format!("the API server does not serve {resource}"),
            );
            return;
        };
        let namespace = source_namespace
            .filter(|_| api_resource.namespaced)
            .map(|namespace| self.map(namespace));
        if let Some(namespace) = &namespace
            && let Err(reason) = self.ensure_namespace(namespace).await
        {
            self.record(resource, source_namespace, name, Outcome::Failed, reason);
            return;
        }
        let target_name = if resource == stowage_velero_format::resources::NAMESPACES {
            self.map(name)
        } else {
            name.to_string()
        };
        // A namespace being deleted would answer AlreadyExists and then vanish with whatever
        // is restored into it: its deletion is waited out first.
        if resource == stowage_velero_format::resources::NAMESPACES
            && let Err(reason) = self.settle_namespace(&api_resource, &target_name).await
        {
            self.record(resource, source_namespace, name, Outcome::Failed, reason);
            return;
        }
        let (outcome, message, live) = self
            .create_or_keep(&api_resource, namespace.as_deref(), &target_name, &prepared)
            .await;
        let index = self.record(resource, source_namespace, name, outcome, message);
        self.handled[index].has_volumes = has_volumes;
        let Some(live) = live else {
            return;
        };
        if resource == stowage_velero_format::resources::NAMESPACES {
            self.namespaces_ready.insert(target_name.clone());
        }
        if outcome == Outcome::Created
            && resource == stowage_velero_format::resources::PERSISTENT_VOLUMES
        {
            self.volumes_created.insert(target_name.clone());
        }
        if matches!(outcome, Outcome::Created | Outcome::Updated)
            && plan::group_of(resource) == "apiextensions.k8s.io"
        {
            self.wait_established(&api_resource, &target_name).await;
            self.discovery_stale = true;
        }
        if outcome == Outcome::Created {
            let owners = plan::owner_references(object);
            if !owners.is_empty() {
                let dependent = Dependent {
                    resource: api_resource.clone(),
                    namespace: namespace.clone(),
                    name: target_name.clone(),
                    owners: owners.clone(),
                    handled: index,
                };
                for owner in &owners {
                    if let Some(uid) = owner.get("uid").and_then(Value::as_str) {
                        self.waiting
                            .entry(uid.to_string())
                            .or_default()
                            .push(dependent.clone());
                    }
                }
                // An owner restored before its dependent (not Velero's usual order).
                let ready: Vec<&str> = owners
                    .iter()
                    .filter_map(|owner| owner.get("uid").and_then(Value::as_str))
                    .filter(|uid| self.new_uids.contains_key(*uid))
                    .collect();
                if !ready.is_empty() {
                    self.adopt(&dependent).await;
                }
            }
        }
        let old_uid = object.pointer("/metadata/uid").and_then(Value::as_str);
        let new_uid = live.pointer("/metadata/uid").and_then(Value::as_str);
        if let (Some(old_uid), Some(new_uid)) = (old_uid, new_uid) {
            self.new_uids
                .insert(old_uid.to_string(), new_uid.to_string());
            for dependent in self.waiting.remove(old_uid).unwrap_or_default() {
                self.adopt(&dependent).await;
            }
        }
    }

    /// Creates the object, or applies the existing-resource policy to the one there; the
    /// outcome, its message and the object as it is in the cluster now (`None` on failure).
    async fn create_or_keep(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
        prepared: &Value,
    ) -> (Outcome, String, Option<Value>) {
        let error = match self.api.create(resource, namespace, prepared).await {
            Ok(stored) => return (Outcome::Created, String::new(), Some(stored)),
            Err(error) => error,
        };
        if !error.already_exists() {
            return (Outcome::Failed, error.reason_text(), None);
        }
        let live = match self.api.get(resource, namespace, name).await {
            Ok(Some(live)) => live,
            Ok(None) => {
                return (
                    Outcome::Failed,
                    format!(
                        "{} but it cannot be read: it is being deleted",
                        error.reason_text()
                    ),
                    None,
                );
            }
            Err(read) => return (Outcome::Failed, read.reason_text(), None),
        };
        match self.options.policy {
            ExistingPolicy::None => (
                Outcome::SkippedExists,
                "already exists; the existing-resource policy `none` leaves it as it is"
                    .to_string(),
                Some(live),
            ),
            ExistingPolicy::Update => {
                let mut replacement = prepared.clone();
                plan::carry_live_fields(&resource.group_resource(), &mut replacement, &live);
                match self.api.replace(resource, namespace, name, &replacement).await {
                    Ok(stored) => (
                        Outcome::Updated,
                        "already existed; replaced by the backed-up content (existing-resource policy `update`)".to_string(),
                        Some(stored),
                    ),
                    Err(error) => (
                        Outcome::Failed,
                        format!("already exists and updating it failed: {}", error.reason_text()),
                        None,
                    ),
                }
            }
        }
    }

    /// Waits until CRD `name` says Established (or the timeout); its custom resources are
    /// restored after it either way, failing with the API server's reason if not served.
    async fn wait_established(&self, crds: &ApiResource, name: &str) {
        let deadline = Instant::now() + self.options.crd_timeout;
        loop {
            match self.api.get(crds, None, name).await {
                Ok(Some(crd)) if established(&crd) => return,
                Ok(_) => {}
                Err(error) => (self.log)("warning", format!("reading CRD {name}: {error}")),
            }
            if Instant::now() >= deadline {
                (self.log)(
                    "warning",
                    format!(
                        "CRD {name} was not Established within {}s; its custom resources may fail",
                        self.options.crd_timeout.as_secs()
                    ),
                );
                return;
            }
            tokio::time::sleep(self.options.poll_interval).await;
        }
    }

    /// Points `dependent`'s ownerReferences at the owners that exist now (their current uids),
    /// leaving out those not restored; retried when the object changed under it.
    async fn adopt(&mut self, dependent: &Dependent) {
        let owners: Vec<Value> = dependent
            .owners
            .iter()
            .filter_map(|owner| {
                let uid = owner.get("uid").and_then(Value::as_str)?;
                let new_uid = self.new_uids.get(uid)?;
                let mut owner = owner.clone();
                owner["uid"] = Value::String(new_uid.clone());
                Some(owner)
            })
            .collect();
        let names: Vec<String> = owners
            .iter()
            .map(|owner| {
                format!(
                    "{} {}",
                    owner
                        .get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    owner
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                )
            })
            .collect();
        let what = match &dependent.namespace {
            Some(namespace) => format!(
                "{}/{namespace}/{}",
                dependent.resource.group_resource(),
                dependent.name
            ),
            None => format!("{}/{}", dependent.resource.group_resource(), dependent.name),
        };
        let mut last_error: Option<ObjectError> = None;
        for _ in 0..3 {
            let live = match self
                .api
                .get(
                    &dependent.resource,
                    dependent.namespace.as_deref(),
                    &dependent.name,
                )
                .await
            {
                Ok(Some(live)) => live,
                Ok(None) => {
                    (self.log)(
                        "warning",
                        format!("{what} is gone before its owners were restored"),
                    );
                    return;
                }
                Err(error) => {
                    last_error = Some(error);
                    break;
                }
            };
            let mut updated = live.clone();
            updated["metadata"]["ownerReferences"] = Value::Array(owners.clone());
            match self
                .api
                .replace(
                    &dependent.resource,
                    dependent.namespace.as_deref(),
                    &dependent.name,
                    &updated,
                )
                .await
            {
                Ok(_) => {
                    (self.log)(
                        "info",
                        format!("{what} is owned by the restored {}", names.join(", ")),
                    );
                    return;
                }
                Err(error) if error.is_conflict() => last_error = Some(error),
                Err(error) => {
                    last_error = Some(error);
                    break;
                }
            }
        }
        if let Some(error) = last_error {
            let message = format!(
                "created, but pointing it at its restored owner {} failed: {}",
                names.join(", "),
                error.reason_text()
            );
            (self.log)("warning", format!("{what}: {message}"));
            if let Some(handled) = self.handled.get_mut(dependent.handled) {
                handled.message = message;
            }
        }
    }
}

/// How often the wait for a Terminating namespace says it is still waiting.
const NAMESPACE_PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Whether a namespace is being deleted: it carries a deletionTimestamp (its phase says
/// Terminating too, but the timestamp is what the API server sets first).
fn terminating(namespace: &Value) -> bool {
    namespace.pointer("/metadata/deletionTimestamp").is_some()
        || namespace.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
}

/// Whether a CRD's status says Established=True.
fn established(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conditions| {
            conditions.iter().any(|condition| {
                condition.get("type").and_then(Value::as_str) == Some("Established")
                    && condition.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}
