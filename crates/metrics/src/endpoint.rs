//! The `/metrics` HTTP endpoint: plain HTTP/1.1 on its own address, answering `GET /metrics`
//! with the process registry and 404 for anything else.

use std::{convert::Infallible, fmt, net::SocketAddr, str::FromStr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The content type of prometheus-client's text encoding.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("`{0}` is neither an address (host:port) nor `off`")]
    InvalidAddress(String),
    #[error("listening for metrics scrapes on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Where `/metrics` is served, or nowhere (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl FromStr for MetricsListen {
    type Err = MetricsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "" | "off" | "none" => Ok(MetricsListen(None)),
            address => address
                .parse()
                .map(|addr| MetricsListen(Some(addr)))
                .map_err(|_| MetricsError::InvalidAddress(text.to_string())),
        }
    }
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("off"),
        }
    }
}

/// The metrics flag every stowage binary flattens into its config.
#[derive(Clone, Debug, clap::Args)]
pub struct MetricsArgs {
    /// Address the Prometheus `/metrics` HTTP endpoint listens on; `off` serves none.
    #[arg(
        long = "metrics-listen",
        env = "STOWAGE_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_listen: MetricsListen,
}

impl MetricsArgs {
    /// Serves the process registry until `shutdown`. A port that cannot be bound is logged and
    /// the service runs on without metrics: backups matter more than their statistics, and
    /// Prometheus shows the target as down, which is the alert.
    pub async fn start(&self, shutdown: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        let addr = self.metrics_listen.0?;
        match bind(addr).await {
            Ok(listener) => Some(tokio::spawn(serve(listener, shutdown))),
            Err(error) => {
                tracing::error!(%error, "metrics endpoint not served");
                None
            }
        }
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Answers scrapes on `listener` until `shutdown`, then waits for the scrapes in progress.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics on /metrics");
    }
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like; the next accept may succeed.
                    tracing::warn!(%error, "accepting a metrics connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(|request| async move {
                    Ok::<_, Infallible>(answer(&request))
                }),
            );
            tokio::pin!(connection);
            tokio::select! {
                result = &mut connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "metrics connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
    connections.close();
    connections.wait().await;
}

fn answer(request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let response = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        response
    };
    match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            let text = crate::encode(&crate::registry());
            response(StatusCode::OK, CONTENT_TYPE, text)
        }
        (_, "/metrics") => response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ),
        _ => response(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are on /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn listen_address_parses_off_and_refuses_junk() {
        assert_eq!("off".parse::<MetricsListen>().unwrap(), MetricsListen(None));
        assert_eq!(
            "127.0.0.1:9090".parse::<MetricsListen>().unwrap(),
            MetricsListen(Some("127.0.0.1:9090".parse().unwrap()))
        );
        let error = "localhost".parse::<MetricsListen>().unwrap_err();
        assert!(error.to_string().contains("`localhost`"), "{error}");
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply
    }

    #[tokio::test]
    async fn scrape_returns_the_process_registry_and_other_paths_404() {
        let counter = Counter::<u64>::default();
        crate::registry().register("endpoint_test_scrapes", "test counter", counter.clone());
        counter.inc_by(7);
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, shutdown.clone()));
        let reply = get(addr, "/metrics").await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("endpoint_test_scrapes_total 7"), "{reply}");
        let reply = get(addr, "/other").await;
        assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
        shutdown.cancel();
        server.await.unwrap();
    }
}
