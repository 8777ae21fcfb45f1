//! Waiting out a change of leader. The orchestrator runs as two replicas of which one leads;
//! the other answers every call Unavailable, marked `stowage-standby`, having done nothing.
//! Such a refusal is safe to send again whatever the call (a read, a create, a cancel), so
//! every call is: after a pause that doubles, until the leader answers or [`WAIT`] has
//! passed. The first time, the CLI says once on stderr that it waits. The same holds for a
//! call whose connection could not be established (refused: nothing was sent), as while a
//! takeover leaves the Service without an endpoint: it is sent again with the same pauses for
//! up to the same [`WAIT`], and the CLI says once that it waits for the server. An
//! Unavailable without the marker (the leader's own answer) and a connection that broke with
//! the call in flight are not retried here: the one exception is [`create_backup_again`], for
//! a create whose connection broke in flight.
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

/// Whether the CLI already said that it waits for a leader (said once per process).
static ANNOUNCED: AtomicBool = AtomicBool::new(false);
/// Whether the CLI already said that it waits for the server to accept connections.
static ANNOUNCED_SERVER: AtomicBool = AtomicBool::new(false);

/// The pauses between attempts: doubling from [`FIRST_PAUSE`] up to [`LONGEST_PAUSE`], as
/// long as the next pause still ends within the wait counted from the first attempt.
pub struct Backoff {
    started: Instant,
    pause: Duration,
    wait: Duration,
}

impl Backoff {
    pub fn new(wait: Duration) -> Backoff {
        Backoff {
            started: Instant::now(),
            pause: FIRST_PAUSE,
            wait,
        }
    }

    /// The pause before the next attempt, or None when it would end past the wait.
    pub fn next(&mut self) -> Option<Duration> {
        let pause = self.pause;
        if self.started.elapsed() + pause > self.wait {
            return None;
        }
        self.pause = (pause * 2).min(LONGEST_PAUSE);
        Some(pause)
    }
}

/// Whether an attempt failed before anything was sent: the connection to the server could
/// not be established (refused, as with a Service without endpoints).
pub fn never_connected(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Says once per process that the CLI waits for the server at `server` to accept
/// connections.
pub fn announce_waiting_for_server(server: &str, wait: Duration, cause: &str) {
    if !ANNOUNCED_SERVER.swap(true, Ordering::Relaxed) {
        eprintln!(
            "Waiting for the stowage server at {server} (up to {} s): {cause}",
            wait.as_secs()
        );
    }
}

/// Sends a call again while a standby refuses it or its connection cannot be established.
#[derive(Debug, Clone)]
pub struct WaitForLeader<S> {
    inner: S,
    wait: Duration,
    /// The server's address, as the waiting message names it.
    server: std::sync::Arc<str>,
}

impl<S> WaitForLeader<S> {
    pub fn new(inner: S, server: &str) -> Self {
        WaitForLeader {
            inner,
            wait: WAIT,
            server: server.into(),
        }
    }

    #[cfg(test)]
    fn with_wait(inner: S, wait: Duration) -> Self {
        WaitForLeader {
            inner,
            wait,
            server: "http://orchestrator:8080".into(),
        }
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
        let server = self.server.clone();
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
            let mut backoff = Backoff::new(wait);
            let mut attempt = ready.call(again(&parts)).await.map_err(Into::into);
            loop {
                let pause = match &attempt {
                    Ok(response) if refused_by_standby(response) => {
                        let Some(pause) = backoff.next() else { break };
                        if !ANNOUNCED.swap(true, Ordering::Relaxed) {
                            eprintln!(
                                "Waiting for a leading stowage orchestrator (up to {} s): {}",
                                wait.as_secs(),
                                message(response)
                            );
                        }
                        pause
                    }
                    Err(error) if never_connected(&**error) => {
                        let Some(pause) = backoff.next() else { break };
                        announce_waiting_for_server(&server, wait, &error.to_string());
                        pause
                    }
                    _ => break,
                };
                tokio::time::sleep(pause).await;
                let ready = inner.ready().await.map_err(Into::into);
                attempt = match ready {
                    Ok(ready) => ready.call(again(&parts)).await.map_err(Into::into),
                    Err(error) => Err(error),
                };
            }
            attempt
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
    let mut backoff = Backoff::new(WAIT);
    let mut pause = backoff.next();
    loop {
        tokio::time::sleep(pause.unwrap_or_default()).await;
        match session.client.create_backup(request.clone()).await {
            Ok(created) => return Ok(created.into_inner()),
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                return session::get_backup(session, &request.name).await;
            }
            Err(status) if std::error::Error::source(&status).is_some() => {
                pause = backoff.next();
                if pause.is_none() {
                    return Err(session.fail(status, call));
                }
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
        let service = WaitForLeader::new(
            replicas(3, true, Arc::clone(&seen)),
            "http://orchestrator:8080",
        );
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
        let service = WaitForLeader::new(
            replicas(1, false, Arc::clone(&seen)),
            "http://orchestrator:8080",
        );
        let response = service.oneshot(call("x")).await.unwrap();
        assert_eq!(response.headers().get("grpc-status").unwrap(), "14");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    /// Fails the first `failures` calls as a connection that `kind` ended (before the call
    /// reached a server), then answers; records each request body it saw.
    fn unreachable(
        failures: usize,
        kind: std::io::ErrorKind,
        seen: Arc<std::sync::Mutex<Vec<bytes::Bytes>>>,
    ) -> impl tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<()>,
        Error = BoxError,
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
                if calls.fetch_add(1, Ordering::SeqCst) < failures {
                    // As the transport wraps it: the I/O error is a source, not the error.
                    #[derive(Debug, thiserror::Error)]
                    #[error("tcp connect error")]
                    struct Connect(#[source] std::io::Error);
                    return Err(BoxError::from(Connect(std::io::Error::from(kind))));
                }
                Ok(http::Response::builder()
                    .header("x-answered-by", "leader")
                    .body(())
                    .unwrap())
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_whose_connection_was_refused_is_sent_again_until_the_server_answers() {
        let seen = Arc::default();
        let service = WaitForLeader::new(
            unreachable(4, std::io::ErrorKind::ConnectionRefused, Arc::clone(&seen)),
            "http://orchestrator:8080",
        );
        let started = Instant::now();
        let response = service.oneshot(call("same bytes")).await.unwrap();
        assert_eq!(response.headers().get("x-answered-by").unwrap(), "leader");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 5, "four refused connections, then the server");
        assert!(seen.iter().all(|body| body == "same bytes"), "{seen:?}");
        // The standby retry's pauses: 0.25 + 0.5 + 1 + 2 s.
        assert_eq!(started.elapsed(), Duration::from_millis(3750));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_connection_fails_with_its_error_after_the_wait() {
        let seen = Arc::default();
        let service = WaitForLeader::with_wait(
            unreachable(
                usize::MAX,
                std::io::ErrorKind::ConnectionRefused,
                Arc::clone(&seen),
            ),
            Duration::from_secs(5),
        );
        let error = service.oneshot(call("x")).await.unwrap_err();
        assert!(never_connected(&*error), "the refusal itself: {error}");
        assert_eq!(
            seen.lock().unwrap().len(),
            5,
            "as many as a standby's refusals"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_broke_with_the_call_in_flight_is_not_sent_again() {
        let seen = Arc::default();
        let service = WaitForLeader::new(
            unreachable(1, std::io::ErrorKind::ConnectionReset, Arc::clone(&seen)),
            "http://orchestrator:8080",
        );
        let error = service.oneshot(call("x")).await.unwrap_err();
        assert!(!never_connected(&*error));
        assert_eq!(seen.lock().unwrap().len(), 1, "it may have landed");
    }

    #[tokio::test]
    async fn a_connection_to_a_closed_port_counts_as_never_connected() {
        // What the transport really reports for a port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let error = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap_err();
        assert!(never_connected(&error), "{error:?}");
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
