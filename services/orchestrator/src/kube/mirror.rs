//! Mirrors each volume of a backup or restore as a Velero `PodVolumeBackup` /
//! `PodVolumeRestore` object in the stowage namespace, so that
//! `kubectl get podvolumebackups -l velero.io/backup-name=NAME -o yaml` works as in Velero's
//! troubleshooting guide. The object store stays the source of truth: a failed mirror write is
//! logged, never fails the volume. A runner hands its mirrors to a [`MirrorWriter`], which
//! writes them beside the agent calls and skips states superseded before they were sent.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    time::Duration,
};

use ::kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
};
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{Value, json};
use stowage_contract::{
    objects::{self, PodVolumeBackup, PodVolumeRestore},
    phase::VolumePhase,
};
use tokio::{
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, sleep_until},
};
use tracing::Instrument;

use super::{Cluster, is_conflict, is_not_found};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub enum MirrorKind {
    PodVolumeBackup,
    PodVolumeRestore,
}

impl MirrorKind {
    fn resource(self) -> ApiResource {
        let (kind, plural) = match self {
            MirrorKind::PodVolumeBackup => (PodVolumeBackup::KIND, PodVolumeBackup::PLURAL),
            MirrorKind::PodVolumeRestore => (PodVolumeRestore::KIND, PodVolumeRestore::PLURAL),
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(objects::GROUP, objects::VERSION, kind),
            plural,
        )
    }
}

/// A stable object name for one volume of one backup or restore: `<owner>-<hash>` where the
/// hash covers the pod uid and volume, so a restarted orchestrator updates the same object.
pub fn object_name(owner: &str, pod_uid: &str, volume: &str) -> String {
    // FNV-1a: stable across builds, unlike std's hasher, and plenty for a name suffix.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in pod_uid.bytes().chain([0]).chain(volume.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let suffix = format!("{:010x}", hash & 0xff_ffff_ffff);
    let prefix: String = owner.chars().take(63 - 1 - suffix.len()).collect();
    format!("{}-{suffix}", prefix.trim_end_matches(['-', '.']))
}

/// One mirror object as it should be now. Every write sends all of it: the spec gains the
/// repository once the volume starts, so a patch carries the spec too.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub name: String,
    pub labels: Value,
    pub spec: Value,
    pub status: Value,
}

fn api(cluster: &Cluster, kind: MirrorKind) -> Api<DynamicObject> {
    Api::namespaced_with(
        cluster.client().clone(),
        cluster.stowage_namespace(),
        &kind.resource(),
    )
}

/// Merge-patches `mirror` into its object, or creates the object
/// when there is none: for an object that probably exists (a restarted orchestrator's).
pub async fn patch_or_create(cluster: &Cluster, kind: MirrorKind, mirror: &Mirror) -> Result<()> {
    let api = api(cluster, kind);
    match patch(&api, kind, mirror).await {
        Err(Error::Kube { source, .. }) if is_not_found(&source) => {
            create(&api, cluster.stowage_namespace(), kind, mirror).await
        }
        other => other,
    }
}

/// Creates the object of `mirror`, or merge-patches it into the object already there: for an object that probably does not exist yet (a new backup's), which
/// costs one write instead of a patch answered 404 and then the create.
pub async fn create_or_patch(cluster: &Cluster, kind: MirrorKind, mirror: &Mirror) -> Result<()> {
    let api = api(cluster, kind);
    match create(&api, cluster.stowage_namespace(), kind, mirror).await {
        Err(Error::Kube { source, .. }) if is_conflict(&source) => patch(&api, kind, mirror).await,
        other => other,
    }
}

async fn patch(api: &Api<DynamicObject>, kind: MirrorKind, mirror: &Mirror) -> Result<()> {
    let name = &mirror.name;
    // No status subresource on the CRDs (deploy/kustomize/base/crds): status is patched on
    // the object itself, and a create may carry it.
    let patch = json!({
        "metadata": {"labels": mirror.labels},
        "spec": mirror.spec,
        "status": mirror.status,
    });
    Cluster::merge_patch(api, name, &patch)
        .await
        .map_err(Error::kube(format!("updating {kind:?} {name}")))?;
    Ok(())
}

async fn create(
    api: &Api<DynamicObject>,
    namespace: &str,
    kind: MirrorKind,
    mirror: &Mirror,
) -> Result<()> {
    let name = &mirror.name;
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": objects::API_VERSION,
        "kind": kind.resource().kind,
        "metadata": {"name": name, "namespace": namespace, "labels": mirror.labels},
        "spec": mirror.spec,
        "status": mirror.status,
    }))
    .map_err(|error| Error::Failed(format!("{kind:?} manifest: {error}")))?;
    api.create(&PostParams::default(), &object)
        .await
        .map_err(Error::kube(format!("creating {kind:?} {name}")))?;
    Ok(())
}

/// Mirror writes of one backup or restore in flight at once: enough to hide the API server's
/// latency, few enough not to flood it with a large backup's objects.
const WRITES_IN_FLIGHT: usize = 8;

enum Command {
    /// A state and when it may be written at the earliest.
    Write(Mirror, Instant),
    Finish,
}

/// Where a backup's or restore's runner hands its mirrors, without waiting for the API server:
/// a volume's agent call never waits for its mirror.
#[derive(Clone)]
pub struct MirrorQueue {
    commands: Option<mpsc::UnboundedSender<Command>>,
}

impl MirrorQueue {
    /// Queues `mirror` as the state its object should get, written as soon as a write slot is
    /// free. A state still waiting when a newer one of the same object arrives is never sent:
    /// a fast volume's InProgress and Completed cost one write, not two.
    pub fn submit(&self, mirror: Mirror) {
        self.submit_after(mirror, Duration::ZERO);
    }

    /// Queues `mirror` to be written no sooner than `hold` from now, unless a newer state of
    /// the object comes first (then that one is written, as soon as it may be).
    pub fn submit_after(&self, mirror: Mirror, hold: Duration) {
        if let Some(commands) = &self.commands {
            // Sent after `finish` only by a job that outlived its runner: nothing to mirror.
            let _ = commands.send(Command::Write(mirror, Instant::now() + hold));
        }
    }
}

/// Writes the mirrors of one backup or restore in the background, at most
/// [`WRITES_IN_FLIGHT`] at once and one at a time per object, always ending with the last
/// state queued for each object.
pub struct MirrorWriter {
    queue: MirrorQueue,
    task: Option<JoinHandle<()>>,
}

impl MirrorWriter {
    /// A writer for objects of `kind`; without a cluster, one that drops every mirror.
    pub fn start(cluster: Option<&Cluster>, kind: MirrorKind) -> MirrorWriter {
        let Some(cluster) = cluster.cloned() else {
            return MirrorWriter {
                queue: MirrorQueue { commands: None },
                task: None,
            };
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        let write = move |mirror: Mirror, first: bool| {
            let cluster = cluster.clone();
            async move {
                // The first write of an object in this process creates it; an object already
                // there (a backup name used before) is patched instead, and a later write that
                // finds the object gone creates it again.
                let written = if first {
                    create_or_patch(&cluster, kind, &mirror).await
                } else {
                    patch_or_create(&cluster, kind, &mirror).await
                };
                if let Err(error) = written {
                    tracing::warn!(%error, "mirroring {kind:?} {}", mirror.name);
                }
            }
        };
        let task = tokio::spawn(
            write_mirrors(receiver, WRITES_IN_FLIGHT, write).instrument(tracing::Span::current()),
        );
        MirrorWriter {
            queue: MirrorQueue {
                commands: Some(sender),
            },
            task: Some(task),
        }
    }

    pub fn queue(&self) -> MirrorQueue {
        self.queue.clone()
    }

    /// Writes what is still queued and returns once every object shows its last state, so a
    /// backup reported ended has mirrors that say so too.
    pub async fn finish(self) {
        if let Some(commands) = &self.queue.commands {
            let _ = commands.send(Command::Finish);
        }
        if let Some(task) = self.task
            && let Err(error) = task.await
        {
            tracing::error!(%error, "the mirror writer ended abnormally");
        }
    }
}

/// The writer's loop: keeps the newest state of each object not yet sent, starts the writes of
/// objects whose states may go out in the order they became ready, and ends after `Finish`
/// (which makes every held state ready) once nothing waits.
async fn write_mirrors<W, F>(
    mut commands: mpsc::UnboundedReceiver<Command>,
    max_in_flight: usize,
    write: W,
) where
    W: Fn(Mirror, bool) -> F,
    F: Future<Output = ()>,
{
    // The newest unsent state of each object and when it may be written.
    let mut waiting: HashMap<String, (Mirror, Instant)> = HashMap::new();
    // Objects whose waiting state may be written now, oldest first. An entry whose state was
    // written meanwhile, or whose object has a write in flight, is skipped: the write's end
    // queues the object again if a newer state waits.
    let mut ready: VecDeque<String> = VecDeque::new();
    // Objects whose waiting state is held, earliest first (entries may be stale, as above).
    let mut held: BinaryHeap<Reverse<(Instant, String)>> = BinaryHeap::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut written: HashSet<String> = HashSet::new();
    let mut writes = FuturesUnordered::new();
    let mut finishing = false;
    loop {
        let now = Instant::now();
        while let Some(Reverse((due, _))) = held.peek()
            && (finishing || *due <= now)
        {
            if let Some(Reverse((_, name))) = held.pop() {
                ready.push_back(name);
            }
        }
        while writes.len() < max_in_flight.max(1)
            && let Some(name) = ready.pop_front()
        {
            if in_flight.contains(&name) {
                continue;
            }
            let Some((mirror, _)) = waiting.remove(&name) else {
                continue;
            };
            let first = !written.contains(&name);
            in_flight.insert(name.clone());
            let write = write(mirror, first);
            writes.push(async move {
                write.await;
                name
            });
        }
        if finishing && writes.is_empty() && ready.is_empty() && held.is_empty() {
            return;
        }
        let next_due = held.peek().map(|Reverse((due, _))| *due);
        tokio::select! {
            command = commands.recv(), if !finishing => match command {
                Some(Command::Write(mirror, due)) => {
                    let name = mirror.name.clone();
                    let previous = waiting.get(&name).map(|(_, due)| *due);
                    // A newer state never waits longer than the one it replaces; the object
                    // is queued again only if it may go out sooner.
                    let due = previous.map_or(due, |previous| due.min(previous));
                    waiting.insert(name.clone(), (mirror, due));
                    if !in_flight.contains(&name) && previous.is_none_or(|previous| due < previous) {
                        queue(&mut ready, &mut held, name, due);
                    }
                }
                Some(Command::Finish) | None => finishing = true,
            },
            Some(name) = writes.next(), if !writes.is_empty() => {
                in_flight.remove(&name);
                if let Some((_, due)) = waiting.get(&name) {
                    queue(&mut ready, &mut held, name.clone(), *due);
                }
                written.insert(name);
            }
            () = sleep_until(next_due.unwrap_or(now)), if next_due.is_some() => {}
        }
    }
}

fn queue(
    ready: &mut VecDeque<String>,
    held: &mut BinaryHeap<Reverse<(Instant, String)>>,
    name: String,
    due: Instant,
) {
    if due <= Instant::now() {
        ready.push_back(name);
    } else {
        held.push(Reverse((due, name)));
    }
}

/// Deletes every mirror object labelled `label=value` (a deleted backup's PodVolumeBackups).
pub async fn delete_labelled(
    cluster: &Cluster,
    kind: MirrorKind,
    label: &str,
    value: &str,
) -> Result<()> {
    let api = api(cluster, kind);
    let list = api
        .list(&::kube::api::ListParams::default().labels(&format!("{label}={value}")))
        .await
        .map_err(Error::kube(format!("listing {kind:?} objects of {value}")))?;
    for object in list.items {
        let Some(name) = object.metadata.name else {
            continue;
        };
        if let Err(error) = api.delete(&name, &Default::default()).await
            && !is_not_found(&error)
        {
            return Err(Error::kube(format!("deleting {kind:?} {name}"))(error));
        }
    }
    Ok(())
}

/// Every mirror object of `kind`.
pub async fn list(cluster: &Cluster, kind: MirrorKind) -> Result<Vec<DynamicObject>> {
    let api = api(cluster, kind);
    Ok(api
        .list(&::kube::api::ListParams::default())
        .await
        .map_err(Error::kube(format!("listing {kind:?} objects")))?
        .items)
}

/// Marks every mirror object of `kind` still `New` or `InProgress` as `Failed` with `message`:
/// after a restart nobody will finish them. Returns how many were marked.
pub async fn fail_unfinished(cluster: &Cluster, kind: MirrorKind, message: &str) -> Result<usize> {
    let api = api(cluster, kind);
    let list = api
        .list(&::kube::api::ListParams::default())
        .await
        .map_err(Error::kube(format!("listing {kind:?} objects")))?;
    let mut marked = 0;
    for object in list.items {
        let phase = VolumePhase::parse(object.data["status"]["phase"].as_str().unwrap_or_default());
        let Some(name) = object.metadata.name.clone() else {
            continue;
        };
        if !phase.is_final() {
            let patch = json!({"status": {"phase": VolumePhase::Failed, "message": message}});
            Cluster::merge_patch(&api, &name, &patch)
                .await
                .map_err(Error::kube(format!("failing {kind:?} {name}")))?;
            marked += 1;
        }
    }
    Ok(marked)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `spec` fields the shipped CRD requires: an API server answers 422 to a mirror that
    /// lacks one, and the mirror is lost (a failed mirror write is only logged).
    fn required_spec_fields(crd: &str) -> Vec<String> {
        let crd: Value = serde_yaml::from_str(crd).expect("the CRD is YAML");
        crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/required")
            .and_then(Value::as_array)
            .expect("the CRD requires spec fields")
            .iter()
            .map(|field| field.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn mirrors_carry_every_spec_field_their_crd_requires() {
        use stowage_proto::v1::{Backup, PodVolumeBackup, PodVolumeRestore, Restore};
        let crds = [
            (
                include_str!(
                    "../../../../deploy/kustomize/base/crds/podvolumebackups.velero.io.yaml"
                ),
                crate::backup::volume_mirror(&Backup::default(), &PodVolumeBackup::default()),
            ),
            (
                include_str!(
                    "../../../../deploy/kustomize/base/crds/podvolumerestores.velero.io.yaml"
                ),
                crate::restore::volume_mirror(&Restore::default(), &PodVolumeRestore::default()),
            ),
        ];
        for (crd, mirror) in crds {
            for field in required_spec_fields(crd) {
                assert!(
                    mirror
                        .spec
                        .get(&field)
                        .is_some_and(|value| !value.is_null()),
                    "mirror {} lacks spec.{field}: {}",
                    mirror.name,
                    mirror.spec
                );
            }
        }
    }

    fn mirror(name: &str, n: i64) -> Mirror {
        Mirror {
            name: name.to_string(),
            labels: json!({}),
            spec: json!({}),
            status: json!({"n": n}),
        }
    }

    fn numbered(name: &str, n: i64) -> Command {
        Command::Write(mirror(name, n), Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn superseded_states_are_skipped_and_each_object_ends_with_its_last() {
        let (sender, receiver) = mpsc::unbounded_channel();
        for command in [
            numbered("a", 1),
            numbered("b", 1),
            numbered("a", 2),
            numbered("a", 3),
            numbered("c", 1),
            numbered("b", 2),
            Command::Finish,
        ] {
            sender.send(command).unwrap();
        }
        let writes = std::sync::Mutex::new(Vec::new());
        write_mirrors(receiver, 1, |mirror: Mirror, first: bool| {
            writes
                .lock()
                .unwrap()
                .push((mirror.name, mirror.status["n"].as_i64().unwrap(), first));
            tokio::time::sleep(std::time::Duration::from_millis(10))
        })
        .await;
        assert_eq!(
            writes.into_inner().unwrap(),
            vec![
                // Queued while a's first write was in flight: a's 2 and b's 1 never go out.
                ("a".to_string(), 1, true),
                ("b".to_string(), 2, true),
                ("c".to_string(), 1, true),
                ("a".to_string(), 3, false),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn writes_stay_within_the_bound_and_one_per_object() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (sender, receiver) = mpsc::unbounded_channel();
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let running_per_object = std::sync::Mutex::new(HashSet::new());
        let driver = write_mirrors(receiver, 3, |mirror: Mirror, _first: bool| {
            let (running, most, per_object) = (&running, &most, &running_per_object);
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                assert!(per_object.lock().unwrap().insert(mirror.name.clone()));
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                per_object.lock().unwrap().remove(&mirror.name);
                running.fetch_sub(1, Ordering::SeqCst);
            }
        });
        let feeder = async {
            for round in 0..5 {
                for object in 0..10 {
                    sender.send(numbered(&format!("o{object}"), round)).unwrap();
                }
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
            sender.send(Command::Finish).unwrap();
        };
        tokio::join!(driver, feeder);
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(running.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn held_states_wait_unless_superseded_and_finish_sends_them_at_once() {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queue = MirrorQueue {
            commands: Some(sender),
        };
        let start = Instant::now();
        let hold = Duration::from_secs(5);
        let writes = std::sync::Mutex::new(Vec::new());
        let driver = write_mirrors(receiver, 8, |mirror: Mirror, _first: bool| {
            writes.lock().unwrap().push((
                mirror.name,
                mirror.status["n"].as_i64().unwrap(),
                (Instant::now() - start).as_secs(),
            ));
            std::future::ready(())
        });
        let feeder = async {
            queue.submit_after(mirror("a", 1), hold);
            queue.submit_after(mirror("b", 1), hold);
            queue.submit_after(mirror("c", 1), Duration::from_secs(60));
            // a starts: its held state is replaced and goes out at once.
            queue.submit(mirror("a", 2));
            tokio::time::sleep(Duration::from_secs(6)).await;
            // c is still held when the run ends: the end sends it.
            queue
                .commands
                .as_ref()
                .unwrap()
                .send(Command::Finish)
                .unwrap();
        };
        tokio::join!(driver, feeder);
        assert_eq!(
            writes.into_inner().unwrap(),
            vec![
                ("a".to_string(), 2, 0),
                ("b".to_string(), 1, 5),
                ("c".to_string(), 1, 6),
            ]
        );
    }

    #[test]
    fn object_names_are_stable_distinct_and_short() {
        let a = object_name("nightly", "uid-1", "data");
        assert_eq!(a, object_name("nightly", "uid-1", "data"));
        assert_ne!(a, object_name("nightly", "uid-1", "cache"));
        assert_ne!(a, object_name("nightly", "uid-2", "data"));
        assert!(a.starts_with("nightly-"));
        let long = object_name(&"b".repeat(63), "uid", "v");
        assert!(long.len() <= 63, "{long}");
    }
}
