//! The gate in front of a service's gRPC API: closed (every call answered Unavailable, naming
//! the leader, and the service's health NOT_SERVING) until this replica leads and has built
//! its service, then open (calls pass, health SERVING). The process-wide health (`""`) stays
//! SERVING throughout: the kubelet's probes ask it, so a standby is live and ready (the
//! Deployment controller and the PodDisruptionBudget count it as available), and the Service
//! routes callers to the leader by the label the leader sets on its Pod ([`crate::PodLabel`]).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
};

use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tower::ServiceExt;

use crate::Leadership;

/// A closed gate for `S` and the handle that opens it. `health` is the router's health
/// reporter: `S` is reported NOT_SERVING from now on, until [`Opener::open`].
pub async fn gate<S: NamedService>(
    leadership: &Leadership,
    health: HealthReporter,
) -> (Gate<S>, Opener<S>) {
    health.set_not_serving::<S>().await;
    let slot = Arc::new(RwLock::new(None));
    (
        Gate {
            slot: slot.clone(),
            leadership: leadership.clone(),
        },
        Opener { slot, health },
    )
}

/// Serves `S` while this replica leads and `S` is built; answers Unavailable otherwise.
pub struct Gate<S> {
    slot: Arc<RwLock<Option<S>>>,
    leadership: Leadership,
}

impl<S> Clone for Gate<S> {
    fn clone(&self) -> Self {
        Gate {
            slot: self.slot.clone(),
            leadership: self.leadership.clone(),
        }
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

/// Opens its gate once.
pub struct Opener<S> {
    slot: Arc<RwLock<Option<S>>>,
    health: HealthReporter,
}

impl<S: NamedService> Opener<S> {
    /// Lets calls through to `service` (while this replica leads) and reports it SERVING.
    pub async fn open(self, service: S) {
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) = Some(service);
        self.health.set_serving::<S>().await;
    }
}

impl<S> Gate<S>
where
    S: Clone,
{
    fn service(&self) -> Option<S> {
        if !self.leadership.is_leader() {
            return None;
        }
        self.slot
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl<S, B> tower::Service<http::Request<B>> for Gate<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service is cloned per call and made ready there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.service() {
            Some(service) => Box::pin(service.oneshot(request)),
            None => {
                let status = self.leadership.unavailable();
                tracing::debug!(path = %request.uri().path(), message = status.message(), "refused: not the leader");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::Role;

    #[derive(Clone)]
    struct Echo;

    impl NamedService for Echo {
        const NAME: &'static str = "stowage.v1.Echo";
    }

    impl tower::Service<http::Request<()>> for Echo {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(http::Response::builder()
                .header("x-served", "yes")
                .body(tonic::body::Body::default())
                .unwrap()))
        }
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> Option<(String, String)> {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|value| value.to_str().unwrap().to_string())
        };
        Some((
            header("grpc-status")?,
            header("grpc-message").unwrap_or_default(),
        ))
    }

    #[tokio::test]
    async fn a_standby_refuses_naming_the_leader_and_a_leader_serves_once_open() {
        let (role, watched) = watch::channel(Role::Standby {
            leader: Some("repo-manager-a".into()),
        });
        let leadership = Leadership {
            identity: "repo-manager-b".into(),
            lease: Some("stowage/stowage-repo-manager".into()),
            role: watched,
            lost: CancellationToken::new(),
            term: Default::default(),
        };
        let (_reporter, _health) = tonic_health::server::health_reporter();
        let (gate, opener) = gate::<Echo>(&leadership, _reporter).await;
        let call = |gate: Gate<Echo>| gate.oneshot(http::Request::new(()));

        let refused = call(gate.clone()).await.unwrap();
        let (code, message) = grpc_status(&refused).expect("a gRPC status");
        assert_eq!(code, (tonic::Code::Unavailable as i32).to_string());
        assert!(
            message.contains("repo-manager-a%20leads"),
            "percent-encoded message: {message}"
        );
        assert_eq!(
            refused
                .headers()
                .get(stowage_grpc::STANDBY_METADATA)
                .unwrap(),
            "repo-manager-a",
            "a client may tell a standby's refusal from other Unavailable answers"
        );

        opener.open(Echo).await;
        let still = call(gate.clone()).await.unwrap();
        assert!(
            grpc_status(&still).is_some(),
            "open, but a standby still refuses"
        );

        role.send_replace(Role::Leader);
        let served = call(gate.clone()).await.unwrap();
        assert_eq!(served.headers().get("x-served").unwrap(), "yes");

        leadership.lost().cancel();
        let after = call(gate).await.unwrap();
        assert!(grpc_status(&after).is_some(), "a leader that lost refuses");
    }

    #[tokio::test]
    async fn a_sole_process_serves_once_open() {
        let leadership = Leadership::sole();
        let (reporter, _health) = tonic_health::server::health_reporter();
        let (gate, opener) = gate::<Echo>(&leadership, reporter).await;
        let starting = gate.clone().oneshot(http::Request::new(())).await.unwrap();
        assert!(grpc_status(&starting).is_some(), "not built yet: refused");
        opener.open(Echo).await;
        let served = gate.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(served.headers().get("x-served").unwrap(), "yes");
    }
}
