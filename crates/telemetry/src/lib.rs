//! Logging and tracing for every stowage binary. [`init`] builds the one subscriber a process
//! has (a fmt layer, plus an OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set); the
//! returned [`TelemetryGuard`] flushes spans on shutdown. [`propagation`] carries the W3C trace
//! context across gRPC calls so one backup is one trace across all three services.

pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log level `{level}`: {source}")]
    InvalidLogLevel {
        level: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("building the OTLP span exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("a global tracing subscriber was already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the span exporter alive; call [`TelemetryGuard::shutdown`] before exit so buffered
/// spans reach the collector.
#[must_use = "dropping the guard without shutdown() may lose the last spans"]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.tracer_provider.is_some()
    }

    pub fn shutdown(mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing spans on shutdown failed: {error}");
        }
    }
}

/// Installs the global subscriber for a binary.
///
/// `default_service_name` names the service in traces unless `OTEL_SERVICE_NAME` is set.
/// `level` is an `EnvFilter` directive (`info`, `debug`, `stowage=debug,info`); `RUST_LOG`
/// wins when set, as operators expect.
pub fn init(
    default_service_name: &str,
    format: LogFormat,
    level: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.is_empty() => EnvFilter::try_new(&directive),
        _ => EnvFilter::try_new(level),
    }
    .map_err(|source| TelemetryError::InvalidLogLevel {
        level: level.to_string(),
        source,
    })?;

    let fmt_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer_provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            Some(build_tracer_provider(default_service_name, &endpoint)?)
        }
        _ => None,
    };
    let otel_layer = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(default_service_name.to_string()))
    });

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()?;
    Ok(TelemetryGuard { tracer_provider })
}

fn build_tracer_provider(
    default_service_name: &str,
    endpoint: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    // The exporter reads the endpoint, headers and timeout from the standard OTEL_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(default_service_name.to_string());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Hex trace id of the current span, or `None` when spans are not exported (no OTLP endpoint),
/// for showing operators where to look in Jaeger.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Logging flags every binary takes.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log line format: `text` or `json`.
    #[arg(long, env = "STOWAGE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter: a level (`info`, `debug`) or `EnvFilter` directives; `RUST_LOG` overrides it.
    #[arg(long, env = "STOWAGE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl LogArgs {
    pub fn init(&self, default_service_name: &str) -> Result<TelemetryGuard, TelemetryError> {
        init(default_service_name, self.log_format, &self.log_level)
    }
}
