//! The election loop: `kube-lease-manager` takes and renews the Lease; this loop turns its
//! answers into a [`Role`], arms the renew deadline from the renewals a client layer sees
//! succeed, and names the leader while standing by.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseParams};
use stowage_contract::fencing::LeaderTerm;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{LeaderError, Leadership, Role, Settings, pod_label::PodLabel};

/// Runs one replica's side of the election (see the crate's comment for the timing rule).
pub struct Elector {
    settings: Settings,
    client: kube::Client,
    renewals: Renewals,
    role: watch::Sender<Role>,
    lost: CancellationToken,
    /// What the fencing rule reads: the term this replica leads in and until when.
    term: LeaderTerm,
    /// This replica's Pod, whose leader label is cleared before it stands for election.
    pod: PodLabel,
}

impl Elector {
    /// An elector for `settings` talking to the API server of `config`, and the handle the
    /// service watches. Nothing is sent before [`Elector::run`].
    pub fn new(
        mut config: kube::Config,
        settings: Settings,
    ) -> Result<(Elector, Leadership), LeaderError> {
        // A hung call must not stall the election's own loop past the point where it matters.
        config.read_timeout = Some(settings.renew_deadline);
        let renewals = Renewals::new(format!(
            "/apis/coordination.k8s.io/v1/namespaces/{}/leases/{}",
            settings.namespace, settings.lease_name
        ));
        let client = kube::client::ClientBuilder::try_from(config)
            .map_err(LeaderError::Client)?
            .with_layer(&RenewalLayer(renewals.clone()))
            .build();
        Ok(Elector::with_client(client, renewals, settings))
    }

    /// An elector whose client already sees its renewals (`renewals` in a [`RenewalLayer`]).
    fn with_client(
        client: kube::Client,
        renewals: Renewals,
        settings: Settings,
    ) -> (Elector, Leadership) {
        let (role, watched) = watch::channel(Role::Standby { leader: None });
        let lost = CancellationToken::new();
        let term = LeaderTerm::default();
        let pod = PodLabel::new(
            client.clone(),
            &settings.namespace,
            &settings.identity,
            settings.retry_period,
        );
        let leadership = Leadership {
            identity: settings.identity.clone(),
            lease: Some(settings.lease()),
            role: watched,
            lost: lost.clone(),
            term: term.clone(),
        };
        (
            Elector {
                settings,
                client,
                renewals,
                role,
                lost,
                term,
                pod,
            },
            leadership,
        )
    }

    /// This replica's Pod, which the service labels once it leads with its service open.
    pub fn pod_label(&self) -> PodLabel {
        self.pod.clone()
    }

    /// Takes part in the election until `stop` fires (then a held Lease is released, so a
    /// standby need not wait for it to expire) or leadership is lost (then the Lease is left
    /// alone: it may already be another's).
    pub async fn run(self, stop: CancellationToken) -> Result<(), LeaderError> {
        let settings = &self.settings;
        let lease = settings.lease();
        // A container restarted after losing its Lease still carries the label: the Service
        // would route callers to a standby. It must be gone before this replica may lead, so
        // that only the leader's own write (after it leads) ever sets it.
        if !self.pod.clear(&stop).await {
            return Ok(());
        }
        let Some(manager) = self.manager(&stop).await else {
            return Ok(());
        };
        tracing::info!(
            lease = %lease,
            identity = %settings.identity,
            lease_duration = ?settings.lease_duration,
            renew_deadline = ?settings.renew_deadline,
            retry_period = ?settings.retry_period,
            "standing for election"
        );
        let (mut leading, task) = manager.watch().await;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &settings.namespace);
        let mut look = tokio::time::interval(settings.retry_period);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed = self.renewals.watch();
        // The lease manager says this replica holds the Lease, but no renewal of this process
        // confirms it yet (a restarted container whose pod name still holds the Lease), or its
        // term could not be read yet: it leads once a renewal confirms it and the term is read.
        let mut unconfirmed = false;
        // The term this replica leads in, once it leads.
        let mut term = None;
        let outcome = loop {
            let leader = *self.role.borrow() == Role::Leader;
            let deadline = self.renewals.deadline(settings.renew_deadline);
            tokio::select! {
                () = stop.cancelled() => break Ok(()),
                changed = leading.changed() => {
                    if changed.is_err() {
                        break Err(LeaderError::Ended {
                            lease: lease.clone(),
                            reason: "the lease manager stopped".into(),
                        });
                    }
                    let leads = *leading.borrow_and_update();
                    if leads && !leader {
                        term = self.try_lead(&leases).await;
                        unconfirmed = term.is_none();
                    } else if !leads && leader {
                        self.lose("another replica holds the Lease");
                        break Ok(());
                    } else if !leads {
                        unconfirmed = false;
                    }
                }
                changed = renewed.changed(), if unconfirmed || leader => {
                    if changed.is_err() {
                        continue;
                    }
                    match term {
                        // Every accepted renewal moves the term's end on.
                        Some(term) if leader => self.report(term),
                        _ => {
                            term = self.try_lead(&leases).await;
                            unconfirmed = term.is_none();
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if leader => {
                    // A renewal may have landed while the timer ran: look again.
                    if !self.renewals.fresh(settings.renew_deadline) {
                        self.lose("the Lease was not renewed within the renew deadline");
                        break Ok(());
                    }
                }
                _ = look.tick(), if !leader => {
                    // Only to name the leader in a standby's answers; the lease manager decides.
                    match leases.get_opt(&settings.lease_name).await {
                        Ok(found) => {
                            let holder = found
                                .and_then(|lease| lease.spec)
                                .and_then(|spec| spec.holder_identity);
                            self.role.send_if_modified(|role| {
                                let standby = Role::Standby { leader: holder };
                                let changed = matches!(role, Role::Standby { .. }) && *role != standby;
                                if changed {
                                    *role = standby;
                                }
                                changed
                            });
                        }
                        Err(error) => tracing::debug!(%error, lease = %lease, "reading the Lease's holder"),
                    }
                }
            }
        };
        // Whether lost or stopping: nothing more is written in this term.
        self.term.lost();
        if self.lost.is_cancelled() {
            // Releasing now could clear a holder that is already another replica.
            task.abort();
            return outcome;
        }
        // Dropping the channel makes the manager release the Lease it holds and end.
        drop(leading);
        match task.await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, lease = %lease, "releasing the Lease");
            }
            Err(error) => tracing::warn!(%error, lease = %lease, "the lease manager's task failed"),
        }
        outcome
    }

    /// The lease manager, once the Lease could be read or created: retried every retry period
    /// (the API server may not answer yet when the pod starts); None when stopped first.
    async fn manager(&self, stop: &CancellationToken) -> Option<LeaseManager> {
        let settings = &self.settings;
        // kube-lease-manager renews `grace` seconds before the Lease expires: with grace =
        // duration − retry period, a leader renews every retry period, as client-go does.
        let duration = settings.lease_duration.as_secs();
        let grace = duration - settings.retry_period.as_secs().min(duration - 1);
        loop {
            let params = LeaseParams::new(settings.identity.clone(), duration, grace)
                .with_field_manager(format!("stowage-{}", settings.identity));
            let created = LeaseManager::new(
                self.client.clone(),
                &settings.lease_name,
                &settings.namespace,
                params,
                LeaseCreateMode::AutoCreate,
            )
            .await;
            match created {
                Ok(manager) => return Some(manager),
                Err(source) => {
                    let error = LeaderError::Lease {
                        lease: settings.lease(),
                        source,
                    };
                    tracing::warn!(%error, "cannot stand for election yet; retrying");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(settings.retry_period) => {}
            }
        }
    }

    /// Leads, if a renewal of this process confirms that it holds the Lease and its term
    /// can be read: the term is reported before the role changes, so the service's first
    /// request and write already carry it. The term number, or None (it tries again at the
    /// next renewal).
    async fn try_lead(&self, leases: &Api<Lease>) -> Option<u64> {
        if !self.renewals.fresh(self.settings.renew_deadline) {
            return None;
        }
        let term = self.read_term(leases).await?;
        self.report(term);
        self.lead(term);
        Some(term)
    }

    /// This replica's term: the Lease's `spec.leaseTransitions` while it holds it.
    /// kube-lease-manager adds one to it each time a replica takes a Lease it did not hold
    /// (right after claiming the holder, before it reports leading), and nothing else changes
    /// it while the holder stays, so a later holder always leads in a greater term. None when
    /// the Lease is not this replica's (any more), has no count, or cannot be read.
    async fn read_term(&self, leases: &Api<Lease>) -> Option<u64> {
        let lease = &self.settings.lease();
        let spec = match leases.get_opt(&self.settings.lease_name).await {
            Ok(found) => found.and_then(|lease| lease.spec)?,
            Err(error) => {
                tracing::warn!(%error, lease = %lease, "reading the term of the Lease; trying again at the next renewal");
                return None;
            }
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return None;
        }
        match spec.lease_transitions {
            Some(transitions) if transitions > 0 => Some(transitions as u64),
            other => {
                tracing::warn!(
                    lease = %lease,
                    lease_transitions = ?other,
                    "the Lease held by this replica counts no transitions, so it has no term to \
                     fence with: not leading until a renewal finds one"
                );
                None
            }
        }
    }

    /// Tells the fencing rule that this replica leads in `term` until the renew deadline
    /// counted from its last accepted renewal: the same instant the deadline timer waits for.
    fn report(&self, term: u64) {
        if let Some(deadline) = self.renewals.deadline(self.settings.renew_deadline) {
            self.term.renewed(term, deadline.into_std());
        }
    }

    fn lead(&self, term: u64) {
        tracing::info!(
            lease = %self.settings.lease(),
            identity = %self.settings.identity,
            term,
            "leading"
        );
        self.role.send_replace(Role::Leader);
    }

    fn lose(&self, reason: &str) {
        tracing::error!(
            lease = %self.settings.lease(),
            identity = %self.settings.identity,
            reason,
            "lost the leadership"
        );
        self.term.lost();
        self.role.send_replace(Role::Lost);
        self.lost.cancel();
    }
}

/// When the last successful renewal of the Lease was sent. Sent, not answered: the
/// `renewTime` it wrote is from just before, so a deadline counted from here is not later
/// than the one the other replicas count from `renewTime`.
#[derive(Debug, Clone)]
pub(crate) struct Renewals {
    path: Arc<str>,
    last: Arc<watch::Sender<Option<Instant>>>,
}

impl Renewals {
    pub(crate) fn new(path: String) -> Renewals {
        Renewals {
            path: path.into(),
            last: Arc::new(watch::channel(None).0),
        }
    }

    fn confirm(&self, sent: Instant) {
        self.last.send_if_modified(|last| {
            let newer = last.is_none_or(|last| last < sent);
            if newer {
                *last = Some(sent);
            }
            newer
        });
    }

    /// The instant by which the next renewal must have been sent, if any was.
    pub(crate) fn deadline(&self, renew_deadline: std::time::Duration) -> Option<Instant> {
        self.last.borrow().map(|last| last + renew_deadline)
    }

    /// Whether a renewal was sent within the last `renew_deadline`.
    fn fresh(&self, renew_deadline: std::time::Duration) -> bool {
        self.deadline(renew_deadline)
            .is_some_and(|deadline| deadline > Instant::now())
    }

    fn watch(&self) -> watch::Receiver<Option<Instant>> {
        self.last.subscribe()
    }
}

/// Sees every write (PATCH) to the Lease that the API server accepted: each of the lease
/// manager's acquisitions and renewals goes through it.
#[derive(Clone)]
pub(crate) struct RenewalLayer(pub(crate) Renewals);

impl<S> tower::Layer<S> for RenewalLayer {
    type Service = RenewalService<S>;

    fn layer(&self, inner: S) -> RenewalService<S> {
        RenewalService {
            inner,
            renewals: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RenewalService<S> {
    inner: S,
    renewals: Renewals,
}

impl<S, B, R> tower::Service<http::Request<B>> for RenewalService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let write =
            request.method() == http::Method::PATCH && request.uri().path() == &*self.renewals.path;
        let sent = Instant::now();
        let renewals = self.renewals.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if write && response.status().is_success() {
                renewals.confirm(sent);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Layer, Service, ServiceExt};

    use super::*;

    const PATH: &str =
        "/apis/coordination.k8s.io/v1/namespaces/stowage/leases/stowage-orchestrator";

    fn request(method: http::Method, path: &str) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri(format!("{path}?fieldManager=stowage-a"))
            .body(())
            .unwrap()
    }

    /// Answers PATCHes with the status in the request's `x-status`, anything else with 200.
    fn api() -> impl Service<
        http::Request<()>,
        Response = http::Response<()>,
        Error = std::convert::Infallible,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(|request: http::Request<()>| async move {
            let status = request
                .headers()
                .get("x-status")
                .and_then(|value| value.to_str().ok()?.parse::<u16>().ok())
                .unwrap_or(200);
            Ok(http::Response::builder().status(status).body(()).unwrap())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn only_accepted_writes_of_the_lease_count_as_renewals() {
        let renewals = Renewals::new(PATH.into());
        let mut service = RenewalLayer(renewals.clone()).layer(api());
        let deadline = Duration::from_secs(10);

        service
            .ready()
            .await
            .unwrap()
            .call(request(http::Method::GET, PATH))
            .await
            .unwrap();
        assert_eq!(renewals.deadline(deadline), None, "a read renews nothing");
        let mut refused = request(http::Method::PATCH, PATH);
        refused
            .headers_mut()
            .insert("x-status", http::HeaderValue::from_static("409"));
        service.ready().await.unwrap().call(refused).await.unwrap();
        assert_eq!(
            renewals.deadline(deadline),
            None,
            "a refused write renews nothing"
        );
        service
            .ready()
            .await
            .unwrap()
            .call(request(http::Method::PATCH, &format!("{PATH}-other")))
            .await
            .unwrap();
        assert_eq!(
            renewals.deadline(deadline),
            None,
            "another Lease is not ours"
        );

        let first = Instant::now();
        service
            .ready()
            .await
            .unwrap()
            .call(request(http::Method::PATCH, PATH))
            .await
            .unwrap();
        assert_eq!(renewals.deadline(deadline), Some(first + deadline));
        tokio::time::advance(Duration::from_secs(2)).await;
        let second = Instant::now();
        service
            .ready()
            .await
            .unwrap()
            .call(request(http::Method::PATCH, PATH))
            .await
            .unwrap();
        assert_eq!(
            renewals.deadline(deadline),
            Some(second + deadline),
            "each renewal moves the deadline on"
        );
        renewals.confirm(first);
        assert_eq!(
            renewals.deadline(deadline),
            Some(second + deadline),
            "an older answer arriving late does not move it back"
        );
    }
}

/// The election against an in-memory Lease API that answers as the API server does for
/// kube-lease-manager's calls (GET, create, server-side apply refused 409 when another holds
/// the Lease, strategic merge), in real time: kube-lease-manager counts expiry on the wall
/// clock, which paused tokio time does not move.
#[cfg(test)]
mod term_tests {
    use std::{
        sync::{
            Mutex,
            atomic::{AtomicBool, Ordering},
        },
        time::Duration,
    };

    use http_body_util::BodyExt as _;
    use serde_json::{Value, json};
    use tower::Layer as _;

    use super::*;

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/stowage/leases";

    const PODS: &str = "/api/v1/namespaces/stowage/pods";

    /// The Lease and the replicas' Pods, and every request in the order received.
    #[derive(Default)]
    struct FakeLeases {
        lease: Mutex<Option<Value>>,
        refuse_writes: AtomicBool,
        pods: Mutex<std::collections::BTreeMap<String, Value>>,
        requests: Mutex<Vec<String>>,
    }

    fn merge(into: &mut Value, patch: &Value) {
        match (into, patch) {
            (Value::Object(into), Value::Object(patch)) => {
                for (key, value) in patch {
                    if value.is_null() {
                        into.remove(key);
                    } else {
                        merge(into.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
            (into, patch) => *into = patch.clone(),
        }
    }

    fn status(code: u16, reason: &str) -> (u16, Value) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": reason, "code": code, "message": reason,
        });
        (code, status)
    }

    impl FakeLeases {
        fn answer(
            &self,
            method: &http::Method,
            path: &str,
            content: &str,
            body: Value,
        ) -> (u16, Value) {
            self.requests
                .lock()
                .unwrap()
                .push(format!("{method} {path}"));
            if let Some(name) = path
                .strip_prefix(PODS)
                .and_then(|rest| rest.strip_prefix('/'))
            {
                return self.pod(method, name, content, body);
            }
            let mut lease = self.lease.lock().unwrap();
            let named = path
                .strip_prefix(LEASES)
                .and_then(|rest| rest.strip_prefix('/'));
            match (method.as_str(), named) {
                ("GET", Some(_)) => match &*lease {
                    Some(found) => (200, found.clone()),
                    None => status(404, "NotFound"),
                },
                ("POST", None) => {
                    let mut created = body;
                    merge(
                        &mut created,
                        &json!({"metadata": {"namespace": "stowage", "resourceVersion": "1"}}),
                    );
                    *lease = Some(created.clone());
                    (201, created)
                }
                ("PATCH", Some(_)) => {
                    if self.refuse_writes.load(Ordering::SeqCst) {
                        return status(500, "InternalError");
                    }
                    let Some(current) = lease.as_mut() else {
                        return status(404, "NotFound");
                    };
                    let holder = current["spec"]["holderIdentity"].clone();
                    let claimed = &body["spec"]["holderIdentity"];
                    // Server-side apply: the holder field is owned by the replica that set it.
                    if content.contains("apply-patch")
                        && claimed.is_string()
                        && holder.is_string()
                        && holder != *claimed
                    {
                        return status(409, "Conflict");
                    }
                    merge(current, &body);
                    (200, current.clone())
                }
                _ => status(405, "MethodNotAllowed"),
            }
        }

        /// A Pod as the API server answers for it: 404 naming a missing one, and a PATCH only
        /// as a JSON merge patch (RFC 7386: a null removes the key).
        fn pod(
            &self,
            method: &http::Method,
            name: &str,
            content: &str,
            body: Value,
        ) -> (u16, Value) {
            let mut pods = self.pods.lock().unwrap();
            let Some(pod) = pods.get_mut(name) else {
                return status(404, "NotFound");
            };
            match method.as_str() {
                "GET" => (200, pod.clone()),
                "PATCH" if content == "application/merge-patch+json" => {
                    merge(pod, &body);
                    (200, pod.clone())
                }
                "PATCH" => status(415, "UnsupportedMediaType"),
                _ => status(405, "MethodNotAllowed"),
            }
        }

        fn add_pod(&self, name: &str, labels: Value) {
            self.pods.lock().unwrap().insert(
                name.into(),
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": name, "namespace": "stowage", "labels": labels}}),
            );
        }

        fn labels(&self, name: &str) -> Value {
            self.pods.lock().unwrap()[name]["metadata"]["labels"].clone()
        }

        fn transitions(&self) -> u64 {
            self.lease.lock().unwrap().as_ref().unwrap()["spec"]["leaseTransitions"]
                .as_u64()
                .unwrap_or_default()
        }
    }

    fn candidate(api: &Arc<FakeLeases>, identity: &str) -> (Elector, Leadership, Renewals) {
        let api = api.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect().await?.to_bytes();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let content = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let (code, answer) = api.answer(&parts.method, parts.uri.path(), &content, body);
                Ok::<_, kube::Error>(
                    http::Response::builder()
                        .status(code)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(kube::client::Body::from(
                            serde_json::to_vec(&answer).unwrap(),
                        ))
                        .unwrap(),
                )
            }
        });
        let renewals = Renewals::new(format!("{LEASES}/stowage-orchestrator"));
        let client = kube::Client::new(RenewalLayer(renewals.clone()).layer(service), "stowage");
        let settings = Settings {
            lease_name: "stowage-orchestrator".into(),
            namespace: "stowage".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_secs(1),
        };
        let (elector, leadership) = Elector::with_client(client, renewals.clone(), settings);
        (elector, leadership, renewals)
    }

    async fn leads(leadership: &Leadership) {
        let never = CancellationToken::new();
        tokio::time::timeout(Duration::from_secs(10), leadership.acquired(&never))
            .await
            .expect("leads within 10 s");
    }

    #[tokio::test]
    async fn each_leader_reports_its_term_until_its_renew_deadline_and_a_later_one_a_greater_term()
    {
        let api = Arc::new(FakeLeases::default());
        let (elector, leadership, renewals) = candidate(&api, "orchestrator-a");
        let term = leadership.term();
        assert_eq!(term.get(), None, "no term before leading");
        let stop = CancellationToken::new();
        let running = tokio::spawn(elector.run(stop.clone()));
        leads(&leadership).await;
        assert_eq!(
            term.get(),
            Some(api.transitions()),
            "the Lease's leaseTransitions"
        );
        assert_eq!(term.get(), Some(1));
        assert!(
            term.holds(std::time::Instant::now()),
            "reported before the role changed"
        );
        // Until the last renewal's send plus the renew deadline: the deadline timer's instant.
        let end = renewals
            .deadline(Duration::from_secs(2))
            .unwrap()
            .into_std();
        assert!(term.holds(end - Duration::from_millis(1)));
        assert!(!term.holds(end), "not past the last renewal's deadline");
        // Each accepted renewal moves the end on.
        tokio::time::timeout(Duration::from_secs(10), async {
            while !term.holds(end) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("a renewal within 10 s moves the term's end past the probe");

        // Stopping releases the Lease: the term ends first.
        stop.cancel();
        running.await.unwrap().unwrap();
        assert!(
            !term.holds(std::time::Instant::now()),
            "released: holds nothing"
        );
        assert_eq!(term.get(), Some(1), "still sent, so servers can refuse it");

        let (next, next_leadership, _) = candidate(&api, "orchestrator-b");
        let stop = CancellationToken::new();
        let running = tokio::spawn(next.run(stop.clone()));
        leads(&next_leadership).await;
        assert_eq!(
            next_leadership.term().get(),
            Some(2),
            "a later holder, a greater term"
        );
        assert!(next_leadership.term().holds(std::time::Instant::now()));
        stop.cancel();
        running.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_restarted_replica_clears_its_stale_leader_label_before_it_stands_for_election() {
        let api = Arc::new(FakeLeases::default());
        api.add_pod(
            "orchestrator-a",
            json!({"app.kubernetes.io/name": "stowage-orchestrator", "stowage.io/leader": "true"}),
        );
        let (elector, leadership, _) = candidate(&api, "orchestrator-a");
        let stop = CancellationToken::new();
        let running = tokio::spawn(elector.run(stop.clone()));
        leads(&leadership).await;
        assert_eq!(
            api.labels("orchestrator-a"),
            json!({"app.kubernetes.io/name": "stowage-orchestrator"}),
            "the leader label is gone, the others are kept"
        );
        let requests = api.requests.lock().unwrap().clone();
        assert_eq!(
            requests.first().map(String::as_str),
            Some("PATCH /api/v1/namespaces/stowage/pods/orchestrator-a"),
            "cleared before the Lease is even read: {requests:?}"
        );
        stop.cancel();
        running.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_replica_without_a_pod_still_stands_for_election() {
        let api = Arc::new(FakeLeases::default());
        let (elector, leadership, _) = candidate(&api, "orchestrator-a");
        let stop = CancellationToken::new();
        let running = tokio::spawn(elector.run(stop.clone()));
        leads(&leadership).await;
        stop.cancel();
        running.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_label_is_set_retried_each_retry_period_until_the_pod_takes_it() {
        let api = Arc::new(FakeLeases::default());
        let (elector, _, _) = candidate(&api, "orchestrator-b");
        let label = elector.pod_label();
        assert_eq!(label.pod(), "stowage/orchestrator-b");
        let stop = CancellationToken::new();
        let setting = tokio::spawn({
            let stop = stop.clone();
            async move { label.set(&stop).await }
        });
        let patches = || {
            api.requests
                .lock()
                .unwrap()
                .iter()
                .filter(|request| {
                    *request == "PATCH /api/v1/namespaces/stowage/pods/orchestrator-b"
                })
                .count()
        };
        // The Pod is missing (404): each retry period another attempt, none succeeds.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(patches(), 3, "at 0 s, 1 s and 2 s");
        assert!(!setting.is_finished());
        api.add_pod(
            "orchestrator-b",
            json!({"app.kubernetes.io/name": "stowage-orchestrator"}),
        );
        assert!(setting.await.unwrap(), "set once the Pod exists");
        assert_eq!(patches(), 4);
        assert_eq!(
            api.labels("orchestrator-b"),
            json!({"app.kubernetes.io/name": "stowage-orchestrator", "stowage.io/leader": "true"})
        );

        // A stop ends the retries.
        let (elector, _, _) = candidate(&api, "orchestrator-c");
        stop.cancel();
        assert!(!elector.pod_label().set(&stop).await);
    }

    #[tokio::test]
    async fn a_leader_that_cannot_renew_holds_nothing_past_its_deadline_then_loses() {
        let api = Arc::new(FakeLeases::default());
        let (elector, leadership, _) = candidate(&api, "orchestrator-a");
        let term = leadership.term();
        let running = tokio::spawn(elector.run(CancellationToken::new()));
        leads(&leadership).await;
        api.refuse_writes.store(true, Ordering::SeqCst);
        // Whatever the election loop does next, the term's end is already fixed by the last
        // accepted renewal: a process that slept through it holds nothing when it wakes.
        let past = std::time::Instant::now() + Duration::from_secs(2);
        assert!(!term.holds(past));
        tokio::time::timeout(Duration::from_secs(10), leadership.lost().cancelled())
            .await
            .expect("loses within 10 s");
        assert!(!term.holds(std::time::Instant::now()), "lost");
        running.await.unwrap().unwrap();
    }
}
