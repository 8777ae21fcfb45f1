//! The tower layer that counts gRPC requests by service, method and status code and observes
//! their latency. The status of a streaming call is only known from the trailers at the end of
//! its body, so the response body is wrapped and the call is recorded when the body ends (or
//! is dropped because the caller went away).

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::registered;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub grpc_service: String,
    pub grpc_method: String,
    pub grpc_code: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s; longer calls (whole volume streams) land in +Inf and in _sum.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

/// `stowage_grpc_server_requests_total` and `stowage_grpc_server_request_duration_seconds`.
pub struct GrpcMetrics {
    requests: Family<GrpcLabels, Counter>,
    duration: HistogramFamily<GrpcLabels>,
}

impl GrpcMetrics {
    pub fn register(registry: &mut Registry) -> GrpcMetrics {
        GrpcMetrics {
            requests: registered(
                registry,
                "stowage_grpc_server_requests",
                "gRPC requests handled, by service, method and status code",
                Family::default(),
            ),
            duration: registered(
                registry,
                "stowage_grpc_server_request_duration_seconds",
                "Time from request to the end of the response (the whole stream for streaming calls)",
                Family::new_with_constructor(latency_histogram),
            ),
        }
    }

    /// The families in the process registry, registered on first use.
    pub fn global() -> Arc<GrpcMetrics> {
        static GLOBAL: OnceLock<Arc<GrpcMetrics>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Arc::new(GrpcMetrics::register(&mut crate::registry())))
            .clone()
    }

    fn record(&self, labels: &GrpcLabels, seconds: f64) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(seconds);
    }
}

/// The name Prometheus users know for a status code (`OK`, `InvalidArgument`, …).
pub fn code_name(code: tonic::Code) -> String {
    match code {
        tonic::Code::Ok => "OK".to_string(),
        other => format!("{other:?}"),
    }
}

fn header_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|value| tonic::Code::from_bytes(value.as_bytes()))
}

/// `/stowage.v1.VolumeAgent/BackupVolume` → (`stowage.v1.VolumeAgent`, `BackupVolume`).
fn rpc_parts(path: &str) -> (String, String) {
    let path = path.trim_start_matches('/');
    match path.rsplit_once('/') {
        Some((service, method)) => (service.to_string(), method.to_string()),
        None => (path.to_string(), String::new()),
    }
}

#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<GrpcMetrics>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<GrpcMetrics>) -> Self {
        GrpcMetricsLayer { metrics }
    }

    /// Records into the process registry.
    pub fn global() -> Self {
        GrpcMetricsLayer::new(GrpcMetrics::global())
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Body,
{
    type Response = http::Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = rpc_parts(request.uri().path());
        let recorder = Recorder {
            metrics: self.metrics.clone(),
            service,
            method,
            started: Instant::now(),
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.await {
                Ok(response) => {
                    // Trailers-only responses (most errors) carry the status in the headers.
                    let recorder = match header_code(response.headers()) {
                        Some(code) => {
                            recorder.finish(code);
                            None
                        }
                        None => Some(recorder),
                    };
                    Ok(response.map(|inner| MeteredBody { inner, recorder }))
                }
                Err(error) => {
                    recorder.finish(tonic::Code::Internal);
                    Err(error)
                }
            }
        })
    }
}

struct Recorder {
    metrics: Arc<GrpcMetrics>,
    service: String,
    method: String,
    started: Instant,
}

impl Recorder {
    fn finish(self, code: tonic::Code) {
        let labels = GrpcLabels {
            grpc_service: self.service,
            grpc_method: self.method,
            grpc_code: code_name(code),
        };
        self.metrics
            .record(&labels, self.started.elapsed().as_secs_f64());
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the trailers pass, or when it is dropped
    /// before that (the caller hung up: `Cancelled`).
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        recorder: Option<Recorder>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(recorder) = this.project().recorder.take() {
                recorder.finish(tonic::Code::Cancelled);
            }
        }
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(header_code)
                    && let Some(recorder) = this.recorder.take()
                {
                    recorder.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(recorder) = this.recorder.take() {
                    recorder.finish(tonic::Code::Internal);
                }
            }
            // A body that ends without trailers broke the gRPC protocol.
            Poll::Ready(None) => {
                if let Some(recorder) = this.recorder.take() {
                    recorder.finish(tonic::Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tower::{Layer, Service, ServiceExt};

    fn registry_text(registry: &Registry) -> String {
        crate::encode(registry)
    }

    #[tokio::test]
    async fn trailers_only_error_is_counted_with_its_code() {
        let mut registry = Registry::default();
        let layer = GrpcMetricsLayer::new(Arc::new(GrpcMetrics::register(&mut registry)));
        let mut service = layer.layer(tower::service_fn(|_request: http::Request<()>| async {
            let mut response = http::Response::new(Full::new(Bytes::new()));
            response
                .headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static("3"));
            Ok::<_, std::convert::Infallible>(response)
        }));
        let request = http::Request::builder()
            .uri("/stowage.v1.VolumeAgent/BackupVolume")
            .body(())
            .unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        drop(response);
        let text = registry_text(&registry);
        assert!(
            text.contains(r#"stowage_grpc_server_requests_total{grpc_service="stowage.v1.VolumeAgent",grpc_method="BackupVolume",grpc_code="InvalidArgument"} 1"#),
            "{text}"
        );
        assert!(!text.contains("Cancelled"), "recorded once: {text}");
    }

    #[tokio::test]
    async fn streaming_call_is_counted_from_its_trailers_and_a_dropped_one_as_cancelled() {
        let mut registry = Registry::default();
        let layer = GrpcMetricsLayer::new(Arc::new(GrpcMetrics::register(&mut registry)));
        let mut service = layer.layer(tower::service_fn(|_request: http::Request<()>| async {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                Ok(Frame::data(Bytes::from_static(b"event"))),
                Ok(Frame::trailers(trailers)),
            ];
            Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(
                futures::stream::iter(frames),
            )))
        }));
        let request = || {
            http::Request::builder()
                .uri("/stowage.v1.VolumeAgent/RestoreVolume")
                .body(())
                .unwrap()
        };
        let response = service
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
        let text = registry_text(&registry);
        assert!(
            !text.contains("RestoreVolume"),
            "not before the stream ends: {text}"
        );
        response.into_body().collect().await.unwrap();
        let response = service
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
        drop(response);
        let text = registry_text(&registry);
        for code in ["OK", "Cancelled"] {
            assert!(
                text.contains(&format!(
                    r#"grpc_method="RestoreVolume",grpc_code="{code}"}} 1"#
                )),
                "{code}: {text}"
            );
        }
        assert!(
            text.contains("stowage_grpc_server_request_duration_seconds_count"),
            "{text}"
        );
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            rpc_parts("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health".to_string(), "Check".to_string())
        );
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::Unauthenticated), "Unauthenticated");
    }
}
