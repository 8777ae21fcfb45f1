//! Waiting out a change of leader. The orchestrator runs as two replicas of which one leads;
//! the other answers every call Unavailable, marked `stowage-standby`, having done nothing.
//! Such a refusal is safe to send again whatever the call (a read, a create, a cancel), so
//! every call is: after a pause that doubles, until the leader answers or [`WAIT`] has
//! passed. The first time, the CLI says once on stderr that it waits. An Unavailable without
//! the marker (the leader's own answer) and a connection that fails are not retried here:
//! the one exception is [`create_backup_again`], for a create whose connection broke in flight.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::BodyExt;
use stowage_proto::v1;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::{
    error::{Call, CliError},
    session::{self, Session},
};

/// How long a call waits in all for a leader: a takeover takes the lease duration (15 s by
/// default) and a few seconds more.
pub const WAIT: Duration = Duration::from_secs(30);
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const LONGEST_PAUSE: Duration = Duration::from_secs(4);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether the CLI already said that it waits (said once per process).
static ANNOUNCED: AtomicBool = AtomicBool::new(false);

/// Sends a call again while a standby refuses it.
#[derive(Debug, Clone)]
pub struct WaitForLeader<S> {
    inner: S,
    wait: Duration,
}

impl<S> WaitForLeader<S> {
    pub fn new(inner: S) -> Self {
        WaitForLeader { inner, wait: WAIT }
    }

    #[cfg(test)]
    fn with_wait(inner: S, wait: Duration) -> Self {
        WaitForLeader { inner, wait }
    }
}

/// A standby's refusal: gRPC status 14 (Unavailable) with the marker, in the headers (a
/// refusal is a trailers-only answer).
fn refused_by_standby<B>(response: &http::Response<B>) -> bool {
    let headers = response.headers();
    headers.get("grpc-status").is_some_and(|code| code == "14")
        && headers.contains_key(stowage_grpc::STANDBY_METADATA)
}

/// The refusal's message (percent-decoded, as gRPC sends it).
fn message<B>(response: &http::Response<B>) -> String {
    let raw = response
        .headers()
        .get("grpc-message")
        .map(|value| value.as_bytes().to_vec())
        .unwrap_or_default();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&byte) = bytes.next() {
        if byte == b'%' {
            let hex: Vec<u8> = bytes.clone().take(2).copied().collect();
            if let Some(value) = std::str::from_utf8(&hex)
                .ok()
                .filter(|hex| hex.len() == 2)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                decoded.push(value);
                bytes.nth(1);
                continue;
            }
        }
        decoded.push(byte);
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

impl<S, B> tower::Service<http::Request<tonic::body::Body>> for WaitForLeader<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The service made ready is the one to call first; a clone serves the retries.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let mut inner = self.inner.clone();
        let wait = self.wait;
        Box::pin(async move {
            // Requests are one message (unary and server-streaming calls): kept to be sent again.
            let (parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            let again = |parts: &http::request::Parts| {
                let mut request = http::Request::new(tonic::body::Body::new(
                    http_body_util::Full::new(body.clone()),
                ));
                *request.method_mut() = parts.method.clone();
                *request.uri_mut() = parts.uri.clone();
                *request.version_mut() = parts.version;
                *request.headers_mut() = parts.headers.clone();
                if let Some(method) = parts.extensions.get::<tonic::GrpcMethod<'static>>() {
                    request.extensions_mut().insert(method.clone());
                }
                request
            };
            let started = Instant::now();
            let mut pause = FIRST_PAUSE;
            let mut response = ready.call(again(&parts)).await.map_err(Into::into)?;
            while refused_by_standby(&response) && started.elapsed() + pause <= wait {
                if !ANNOUNCED.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "Waiting for a leading stowage orchestrator (up to {} s): {}",
                        wait.as_secs(),
                        message(&response)
                    );
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
                response = inner
                    .ready()
                    .await
                    .map_err(Into::into)?
                    .call(again(&parts))
                    .await
                    .map_err(Into::into)?;
            }
            Ok(response)
        })
    }
}

/// Sends a CreateBackup again whose connection broke with the call in flight (the leader
/// went away): it may have landed. A backup's name makes the create idempotent: sent again
/// (while the connection cannot be made, for up to [`WAIT`]), AlreadyExists means the first
/// one landed, and that backup is the one created.
pub async fn create_backup_again(
    session: &mut Session,
    request: v1::CreateBackupRequest,
    call: &Call,
) -> Result<v1::Backup, CliError> {
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        tokio::time::sleep(pause).await;
        match session.client.create_backup(request.clone()).await {
            Ok(created) => return Ok(created.into_inner()),
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                return session::get_backup(session, &request.name).await;
            }
            Err(status)
                if std::error::Error::source(&status).is_some()
                    && started.elapsed() + pause <= WAIT =>
            {
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
            Err(status) => return Err(session.fail(status, call)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// Answers like a standby for the first `refusals` calls, then like the leader, and
    /// records each request body it saw.
    fn replicas(
        refusals: usize,
        marked: bool,
        seen: Arc<std::sync::Mutex<Vec<bytes::Bytes>>>,
    ) -> impl tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<()>,
        Error = std::convert::Infallible,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + 'static {
        let calls = Arc::new(AtomicUsize::new(0));
        tower::service_fn(move |request: http::Request<tonic::body::Body>| {
            let calls = calls.clone();
            let seen = seen.clone();
            async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                seen.lock().unwrap().push(body);
                let mut response = http::Response::builder();
                if calls.fetch_add(1, Ordering::SeqCst) < refusals {
                    response = response
                        .header("grpc-status", "14")
                        .header("grpc-message", "not%20the%20leader;%20a%20leads");
                    if marked {
                        response = response.header(stowage_grpc::STANDBY_METADATA, "a");
                    }
                } else {
                    response = response.header("x-answered-by", "leader");
                }
                Ok(response.body(()).unwrap())
            }
        })
    }

    fn call(body: &'static str) -> http::Request<tonic::body::Body> {
        http::Request::builder()
            .method("POST")
            .uri("http://orchestrator/stowage.v1.Orchestrator/GetBackup")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                bytes::Bytes::from_static(body.as_bytes()),
            )))
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_a_standby_refused_is_sent_again_until_the_leader_answers() {
        let seen = Arc::default();
        let service = WaitForLeader::new(replicas(3, true, Arc::clone(&seen)));
        let response = service.oneshot(call("same bytes")).await.unwrap();
        assert_eq!(response.headers().get("x-answered-by").unwrap(), "leader");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4, "three refusals, then the leader");
        assert!(seen.iter().all(|body| body == "same bytes"), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_with_the_refusal_after_the_wait() {
        let seen = Arc::default();
        let service = WaitForLeader::with_wait(
            replicas(usize::MAX, true, Arc::clone(&seen)),
            Duration::from_secs(5),
        );
        let started = Instant::now();
        let response = service.oneshot(call("x")).await.unwrap();
        assert!(refused_by_standby(&response));
        assert!(started.elapsed() <= Duration::from_secs(5));
        // 0.25 + 0.5 + 1 + 2 s of pauses fit in 5 s, the next 4 s would not.
        assert_eq!(seen.lock().unwrap().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_without_the_standby_marker_is_not_sent_again() {
        let seen = Arc::default();
        let service = WaitForLeader::new(replicas(1, false, Arc::clone(&seen)));
        let response = service.oneshot(call("x")).await.unwrap();
        assert_eq!(response.headers().get("grpc-status").unwrap(), "14");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_refusal_message_is_percent_decoded() {
        let response = http::Response::builder()
            .header("grpc-message", "not%20the%20leader;%20a%20leads%2")
            .body(())
            .unwrap();
        assert_eq!(message(&response), "not the leader; a leads%2");
    }
}
