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
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{LeaderError, Leadership, Role, Settings};

/// Runs one replica's side of the election (see the crate's comment for the timing rule).
pub struct Elector {
    settings: Settings,
    client: kube::Client,
    renewals: Renewals,
    role: watch::Sender<Role>,
    lost: CancellationToken,
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
        let (role, watched) = watch::channel(Role::Standby { leader: None });
        let lost = CancellationToken::new();
        let leadership = Leadership {
            identity: settings.identity.clone(),
            lease: Some(settings.lease()),
            role: watched,
            lost: lost.clone(),
        };
        Ok((
            Elector {
                settings,
                client,
                renewals,
                role,
                lost,
            },
            leadership,
        ))
    }

    /// Takes part in the election until `stop` fires (then a held Lease is released, so a
    /// standby need not wait for it to expire) or leadership is lost (then the Lease is left
    /// alone: it may already be another's).
    pub async fn run(self, stop: CancellationToken) -> Result<(), LeaderError> {
        let settings = &self.settings;
        let lease = settings.lease();
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
        // confirms it yet (a restarted container whose pod name still holds the Lease): it
        // leads once one does.
        let mut unconfirmed = false;
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
                        unconfirmed = !self.renewals.fresh(settings.renew_deadline);
                        if !unconfirmed {
                            self.lead();
                        }
                    } else if !leads && leader {
                        self.lose("another replica holds the Lease");
                        break Ok(());
                    } else if !leads {
                        unconfirmed = false;
                    }
                }
                changed = renewed.changed(), if unconfirmed => {
                    if changed.is_ok() && self.renewals.fresh(settings.renew_deadline) {
                        unconfirmed = false;
                        self.lead();
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

    fn lead(&self) {
        tracing::info!(
            lease = %self.settings.lease(),
            identity = %self.settings.identity,
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
