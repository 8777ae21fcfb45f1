//! The fencing rule for a service's own Kubernetes writes: a client layer that refuses every
//! request that changes something (POST, PUT, PATCH, DELETE) once the process's leader term
//! has ended, so a leader woken up after a takeover does not overwrite the objects its
//! successor keeps (the orchestrator's PodVolumeBackup/Backup/Restore mirrors, a restore's
//! objects) from its stale view. Reads pass. The election's own client is not fenced: it must
//! be able to renew.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use stowage_contract::fencing::LeaderTerm;

/// Why a Kubernetes write was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "not sending {method} {path} to the Kubernetes API: this {service}'s leader term {term} has \
     ended (another replica leads)"
)]
pub struct WriteRefused {
    pub service: &'static str,
    pub term: u64,
    pub method: http::Method,
    pub path: String,
}

/// A Kubernetes client for a service's work (the in-cluster config or `KUBECONFIG`) whose
/// writes are refused once `term` has ended; `service` names the process in the refusal.
pub async fn fenced_client(
    term: LeaderTerm,
    service: &'static str,
) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&WriteFenceLayer::new(term, service))
        .build())
}

/// Wraps a Kubernetes client's service (`kube::client::ClientBuilder::with_layer`).
#[derive(Debug, Clone)]
pub struct WriteFenceLayer {
    term: LeaderTerm,
    service: &'static str,
}

impl WriteFenceLayer {
    pub fn new(term: LeaderTerm, service: &'static str) -> WriteFenceLayer {
        WriteFenceLayer { term, service }
    }
}

impl<S> tower::Layer<S> for WriteFenceLayer {
    type Service = WriteFence<S>;

    fn layer(&self, inner: S) -> WriteFence<S> {
        WriteFence {
            inner,
            fence: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WriteFence<S> {
    inner: S,
    fence: WriteFenceLayer,
}

impl<S, B> tower::Service<http::Request<B>> for WriteFence<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: From<WriteRefused> + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.method();
        let writes = [
            http::Method::POST,
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE,
        ]
        .contains(method);
        if writes && !self.fence.term.holds(Instant::now()) {
            let refused = WriteRefused {
                service: self.fence.service,
                term: self.fence.term.get().unwrap_or_default(),
                method: method.clone(),
                path: request.uri().path().to_string(),
            };
            tracing::warn!(error = %refused, "write refused by the fencing rule");
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Layer as _, ServiceExt as _};

    use super::*;

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    fn api() -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<()>,
        Error = BoxError,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, BoxError>(http::Response::new(()))
        })
    }

    fn request(method: http::Method) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri("/apis/velero.io/v1/namespaces/stowage/podvolumebackups/nightly-x")
            .body(())
            .unwrap()
    }

    #[tokio::test]
    async fn a_stale_leader_reads_but_writes_nothing_to_the_kubernetes_api() {
        let term = LeaderTerm::default();
        let client = WriteFenceLayer::new(term.clone(), "orchestrator").layer(api());
        assert!(
            client
                .clone()
                .oneshot(request(http::Method::PATCH))
                .await
                .is_ok(),
            "no election: writes"
        );
        term.renewed(2, Instant::now() + Duration::from_secs(10));
        assert!(
            client
                .clone()
                .oneshot(request(http::Method::POST))
                .await
                .is_ok()
        );

        term.renewed(2, Instant::now() - Duration::from_millis(1));
        for method in [
            http::Method::POST,
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE,
        ] {
            let refused = client.clone().oneshot(request(method)).await.unwrap_err();
            assert!(
                refused
                    .to_string()
                    .contains("this orchestrator's leader term 2 has ended"),
                "{refused}"
            );
        }
        assert!(
            client
                .clone()
                .oneshot(request(http::Method::GET))
                .await
                .is_ok(),
            "reads pass"
        );
    }
}
