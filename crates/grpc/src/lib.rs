//! The parts every stowage gRPC server and client share, so a service's `main` only names its
//! own API: a router that already serves `grpc.health.v1` and server reflection and opens a
//! span per request, serving until a cancellation token fires, SIGTERM/SIGINT handling, and
//! client channels that propagate the trace context. Every server also counts its requests
//! (`stowage-metrics`) and admits callers by the policy of [`security`] (mTLS identities,
//! bearer tokens), which is open in plaintext mode.

pub mod fencing;
pub mod restic_status;
pub mod security;

use std::{net::SocketAddr, time::Duration};

pub use restic_status::restic_code;
use security::AuthLayer;
pub use security::{SecurityError, ServerSecurity, TlsArgs};
use stowage_metrics::grpc::GrpcMetricsLayer;
use stowage_telemetry::propagation::{InjectTraceContext, ServerTraceLayer};
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    transport::{Channel, ClientTlsConfig, Endpoint, Server, server::Router},
};
use tower::layer::util::{Identity, Stack};

/// A client channel that sends the caller's trace context with every request.
pub type TracedChannel = InjectTraceContext<Channel>;

/// A server router whose every request runs in a `grpc.server` span, is counted in the
/// process's metrics, and is admitted by the caller policy (outermost first).
pub type TracedRouter =
    Router<Stack<AuthLayer, Stack<GrpcMetricsLayer, Stack<ServerTraceLayer, Identity>>>>;

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("invalid gRPC endpoint `{endpoint}`: {source}")]
    InvalidEndpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving gRPC on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error("configuring TLS: {0}")]
    Tls(tonic::transport::Error),
}

/// A plaintext router serving health (with `S` reported SERVING) and reflection (v1 and
/// v1alpha) listing `S`, health and reflection only, admitting every caller; add the service
/// itself with `add_service`.
pub async fn router_for<S: NamedService>() -> Result<TracedRouter, GrpcError> {
    secured_router_for::<S>(&ServerSecurity::plaintext()).await
}

/// [`router_for`] with the TLS and caller policy of `security` (from [`TlsArgs::server`]).
pub async fn secured_router_for<S: NamedService>(
    security: &ServerSecurity,
) -> Result<TracedRouter, GrpcError> {
    let (router, health) = secured_router_with_health::<S>(security).await?;
    health.set_serving::<S>().await;
    Ok(router)
}

/// [`secured_router_for`] leaving `S`'s health to the caller, through the reporter returned:
/// a replica that stands by reports it NOT_SERVING (not ready) while the process-wide status
/// (`""`, what liveness probes ask) is SERVING.
pub async fn secured_router_with_health<S: NamedService>(
    security: &ServerSecurity,
) -> Result<(TracedRouter, tonic_health::server::HealthReporter), GrpcError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // Both reflection versions: grpcurl and older tools still ask v1alpha.
    let reflection_v1 = reflection_for(S::NAME).build_v1()?;
    let reflection_v1alpha = reflection_for(S::NAME).build_v1alpha()?;
    let mut server = Server::builder();
    if let Some(tls) = &security.tls {
        server = server.tls_config(tls.clone()).map_err(GrpcError::Tls)?;
    }
    let router = server
        .layer(ServerTraceLayer)
        .layer(GrpcMetricsLayer::global())
        .layer(AuthLayer::new(security.policy.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((router, health_reporter))
}

/// Metadata a replica that stands by (not the leader) puts on its Unavailable answers: the call
/// was refused before anything was done, so a client may send it again, whatever it is, once
/// a leader answers. Its value is the leader's identity when known.
pub const STANDBY_METADATA: &str = "stowage-standby";

/// The services every router serves beside its own: health and both reflection versions.
pub const COMMON_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Reflection describing what a process serving `service` answers, and nothing else. The
/// descriptor sets hold every stowage.v1 contract (a service's messages may come from any
/// file), but only the names given here are listed, so `grpcurl list` on an agent does not
/// offer the orchestrator's API, which would answer Unimplemented.
fn reflection_for(service: &str) -> tonic_reflection::server::Builder<'static> {
    COMMON_SERVICES.iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(stowage_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(service),
        |builder, name| builder.with_service_name(*name),
    )
}

/// Serves `router` on `addr` until `shutdown` is cancelled, then lets running calls finish.
pub async fn serve(
    router: TracedRouter,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(), GrpcError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GrpcError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, "serving gRPC");
    router
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await
        .map_err(|source| GrpcError::Serve { addr, source })
}

/// Cancels `token` on the first SIGTERM or SIGINT, so every task holding a child token stops.
pub fn cancel_on_signal(token: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
            _ = terminate => tracing::info!("SIGTERM received, shutting down"),
            _ = token.cancelled() => return,
        }
        token.cancel();
    })
}

fn endpoint(address: &str, tls: Option<ClientTlsConfig>) -> Result<Endpoint, GrpcError> {
    let invalid = |source| GrpcError::InvalidEndpoint {
        endpoint: address.to_string(),
        source,
    };
    // Peers are configured (and discovered) as http:// URLs; with TLS on, the same address is
    // dialled with TLS, so no URL anywhere has to change when a cluster turns mTLS on.
    let uri = match (&tls, address.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => address.to_string(),
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(invalid)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(30));
    match tls {
        Some(tls) => endpoint.tls_config(tls).map_err(invalid),
        None => Ok(endpoint),
    }
}

/// A channel that connects on first use and reconnects after failures; for peers that may
/// start later than the caller. Uses the client TLS installed by
/// [`TlsArgs::install_client_tls`], if any.
pub fn connect_lazy(address: &str) -> Result<TracedChannel, GrpcError> {
    connect_lazy_with(address, security::installed_client_tls(address))
}

/// [`connect_lazy`] with explicit client TLS (`None` = plaintext).
pub fn connect_lazy_with(
    address: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<TracedChannel, GrpcError> {
    Ok(InjectTraceContext::new(
        endpoint(address, tls)?.connect_lazy(),
    ))
}

/// A channel connected now; fails fast when the peer is not there. Uses the installed
/// client TLS, if any.
pub async fn connect(address: &str) -> Result<TracedChannel, GrpcError> {
    connect_with(address, security::installed_client_tls(address)).await
}

/// [`connect`] with explicit client TLS (`None` = plaintext).
pub async fn connect_with(
    address: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<TracedChannel, GrpcError> {
    let channel = endpoint(address, tls)?
        .connect()
        .await
        .map_err(|source| GrpcError::Connect {
            endpoint: address.to_string(),
            source,
        })?;
    Ok(InjectTraceContext::new(channel))
}
