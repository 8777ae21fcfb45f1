//! How the CLI reaches the orchestrator: the server address and credentials from flags, the
//! environment and the config file's context (in that order, per setting), TLS with the CA
//! that signs the server's certificate and optionally a client certificate (mTLS), and a bearer
//! token sent with every call. Secrets come from files only, never from argv.

use std::path::{Path, PathBuf};

use stowage_grpc::{GrpcError, TracedChannel};
use stowage_proto::v1::orchestrator_client::OrchestratorClient;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, ClientTlsConfig, Identity},
};

use crate::{
    config::{Config, ConfigError, Context},
    error::{CliError, root_cause},
    standby::{self, WaitForLeader},
};

/// Where the orchestrator listens when neither flags, environment nor a context say.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// The connection flags of every command; each also from the environment, and each overriding
/// the same setting of the selected context.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectionArgs {
    /// gRPC address of the stowage orchestrator [default: the context's, else
    /// http://127.0.0.1:8080]. https:// (or --cacert) dials TLS.
    #[arg(long, global = true, env = "STOWAGE_SERVER")]
    pub server: Option<String>,
    /// PEM bundle of the CA that signs the orchestrator's certificate; turns on TLS.
    #[arg(long, global = true, env = "STOWAGE_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Name to verify in the orchestrator's certificate instead of the URL's host, e.g.
    /// `stowage-orchestrator` when reaching it through `kubectl port-forward` at 127.0.0.1.
    #[arg(
        long,
        global = true,
        env = "STOWAGE_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    pub tls_server_name: Option<String>,
    /// PEM client certificate for mutual TLS (with --key).
    #[arg(long, global = true, env = "STOWAGE_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, global = true, env = "STOWAGE_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// File holding the bearer token sent with every call (its first line that is not empty
    /// or a `#` comment).
    #[arg(long, global = true, env = "STOWAGE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Context of the config file to use instead of its current context.
    #[arg(long, global = true, env = "STOWAGE_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// The config file [default: $XDG_CONFIG_HOME/stowage/config, else
    /// ~/.config/stowage/config].
    #[arg(long, global = true, env = "STOWAGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConnectionArgs {
    /// The config file's path.
    pub fn config_path(&self) -> Result<PathBuf, ConfigError> {
        match &self.config {
            Some(path) => Ok(path.clone()),
            None => crate::config::default_path(),
        }
    }
}

/// Everything needed to connect, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub server: String,
    pub cacert: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

/// Per setting: the flag or environment variable, else the context's, else the default.
pub fn resolve(args: &ConnectionArgs, context: Option<&Context>) -> Settings {
    let from_context = |pick: fn(&Context) -> Option<PathBuf>| context.and_then(pick);
    Settings {
        server: args
            .server
            .clone()
            .or_else(|| context.and_then(|c| c.server.clone()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_string()),
        cacert: args
            .cacert
            .clone()
            .or_else(|| from_context(|c| c.cacert.clone())),
        tls_server_name: args
            .tls_server_name
            .clone()
            .or_else(|| context.and_then(|c| c.tls_server_name.clone())),
        cert: args
            .cert
            .clone()
            .or_else(|| from_context(|c| c.cert.clone())),
        key: args.key.clone().or_else(|| from_context(|c| c.key.clone())),
        token_file: args
            .token_file
            .clone()
            .or_else(|| from_context(|c| c.token_file.clone())),
    }
}

/// Reads the config file (when there is one to read) and resolves the settings.
pub fn settings(args: &ConnectionArgs) -> Result<Settings, CliError> {
    let path = match args.config_path() {
        Ok(path) => path,
        // No config directory: fine unless a context was asked for by name.
        Err(error) if args.context.is_some() => return Err(CliError::Config(error.to_string())),
        Err(_) => return Ok(resolve(args, None)),
    };
    let config = Config::load(&path).map_err(|error| CliError::Config(error.to_string()))?;
    let context = config
        .selected(args.context.as_deref(), &path)
        .map_err(|error| CliError::Config(error.to_string()))?;
    Ok(resolve(args, context))
}

/// Refuses an address without its scheme: tonic says only "invalid URL".
pub fn check_server(server: &str) -> Result<(), CliError> {
    if server.starts_with("http://") || server.starts_with("https://") {
        Ok(())
    } else {
        Err(CliError::BadServer {
            server: server.to_string(),
        })
    }
}

fn read(what: &'static str, flag: &'static str, path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|error| CliError::CredentialFile {
        what,
        flag,
        path: path.display().to_string(),
        cause: error.to_string(),
    })
}

impl Settings {
    /// Whether calls go over TLS: an https:// server or a CA to verify it with.
    pub fn tls(&self) -> bool {
        self.server.starts_with("https://") || self.cacert.is_some()
    }

    /// The client TLS settings; `None` for plaintext.
    pub fn client_tls(&self) -> Result<Option<ClientTlsConfig>, CliError> {
        let identity = match (&self.cert, &self.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read("the client certificate", "--cert", cert)?,
                read("the client key", "--key", key)?,
            )),
            (Some(_), None) => {
                return Err(CliError::Usage(
                    "--cert needs its private key: give --key (or STOWAGE_KEY) too".to_string(),
                ));
            }
            (None, Some(_)) => {
                return Err(CliError::Usage(
                    "--key needs its certificate: give --cert (or STOWAGE_CERT) too".to_string(),
                ));
            }
        };
        if !self.tls() && identity.is_none() {
            return Ok(None);
        }
        // tonic here trusts no system CAs, so TLS is only possible with the CA given.
        let Some(cacert) = &self.cacert else {
            return Err(CliError::Usage(format!(
                "TLS to {} needs the CA that signs the server's certificate: give --cacert (or \
                 STOWAGE_CACERT, or `cacert` in the context)",
                self.server
            )));
        };
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(
            "the CA bundle",
            "--cacert",
            cacert,
        )?));
        let tls = match &self.tls_server_name {
            Some(name) => tls.domain_name(name.clone()),
            None => tls,
        };
        Ok(Some(match identity {
            Some(identity) => tls.identity(identity),
            None => tls,
        }))
    }

    /// The bearer token of --token-file, ready to send; `None` without a token file.
    pub fn bearer(&self) -> Result<Option<MetadataValue<Ascii>>, CliError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = read("the bearer token file", "--token-file", path)?;
        let text = String::from_utf8_lossy(&text);
        let Some(token) = text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
        else {
            return Err(CliError::CredentialFile {
                what: "the bearer token file",
                flag: "--token-file",
                path: path.display().to_string(),
                cause: "it holds no token".to_string(),
            });
        };
        let mut value: MetadataValue<Ascii> =
            format!("Bearer {token}")
                .parse()
                .map_err(|_| CliError::CredentialFile {
                    what: "the bearer token file",
                    flag: "--token-file",
                    path: path.display().to_string(),
                    cause: "its token has characters a header cannot carry".to_string(),
                })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// Adds `authorization: Bearer <token>` to every call when a token is configured.
#[derive(Clone)]
pub struct Credentials {
    bearer: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Client = OrchestratorClient<InterceptedService<WaitForLeader<TracedChannel>, Credentials>>;

/// Connects to the orchestrator with the resolved settings.
pub async fn connect(settings: &Settings) -> Result<Client, CliError> {
    let server = &settings.server;
    check_server(server)?;
    let tls = settings.client_tls()?;
    let credentials = Credentials {
        bearer: settings.bearer()?,
    };
    let with_tls = tls.is_some();
    // A refused connection (no endpoint while a standby takes over) is waited out, as a
    // standby's refusals are (standby.rs).
    let mut backoff = standby::Backoff::new(standby::WAIT);
    let connected = loop {
        match stowage_grpc::connect_with(server, tls.clone()).await {
            Err(GrpcError::Connect { source, .. }) if standby::never_connected(&source) => {
                let Some(pause) = backoff.next() else {
                    break Err(GrpcError::Connect {
                        endpoint: server.clone(),
                        source,
                    });
                };
                standby::announce_waiting_for_server(server, standby::WAIT, &root_cause(&source));
                tokio::time::sleep(pause).await;
            }
            other => break other,
        }
    };
    match connected {
        Ok(channel) => Ok(OrchestratorClient::with_interceptor(
            WaitForLeader::new(channel, server),
            credentials,
        )),
        Err(GrpcError::InvalidEndpoint { .. }) => Err(CliError::BadServer {
            server: server.clone(),
        }),
        Err(GrpcError::Connect { source, .. }) => {
            Err(unreachable(server, with_tls, root_cause(&source)))
        }
        Err(other) => Err(unreachable(server, with_tls, other.to_string())),
    }
}

/// The sentence for a connection that did not come up, with a hint when TLS is the likely
/// cause: a certificate problem, or a plaintext client at a TLS port.
pub fn unreachable(server: &str, with_tls: bool, cause: String) -> CliError {
    let lower = cause.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        return CliError::TlsFailed {
            server: server.to_string(),
            cause,
        };
    }
    let refused = lower.contains("refused") || lower.contains("dns") || lower.contains("resolve");
    // Over TLS, a connection that came up and then broke was most likely ended by the server
    // for the credentials (the alert does not always reach the client before the reset).
    if with_tls && !refused {
        return CliError::TlsFailed {
            server: server.to_string(),
            cause,
        };
    }
    if !with_tls && !refused {
        return CliError::MaybeTls {
            server: server.to_string(),
            cause,
        };
    }
    CliError::Unreachable {
        server: server.to_string(),
        cause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Context {
        Context {
            name: "prod".into(),
            server: Some("https://stowage.example:8080".into()),
            cacert: Some("/etc/stowage/ca.pem".into()),
            tls_server_name: Some("stowage-orchestrator".into()),
            cert: None,
            key: None,
            token_file: Some("/etc/stowage/token".into()),
        }
    }

    #[test]
    fn flags_override_the_context_setting_by_setting() {
        let args = ConnectionArgs {
            server: Some("https://other:8080".into()),
            token_file: Some("/tmp/mine".into()),
            ..Default::default()
        };
        let settings = resolve(&args, Some(&context()));
        assert_eq!(settings.server, "https://other:8080");
        assert_eq!(settings.cacert, Some("/etc/stowage/ca.pem".into()));
        assert_eq!(
            settings.tls_server_name.as_deref(),
            Some("stowage-orchestrator")
        );
        assert_eq!(settings.token_file, Some("/tmp/mine".into()));
        assert_eq!(settings.cert, None);
    }

    #[test]
    fn without_flags_or_context_the_default_server_in_plaintext() {
        let settings = resolve(&ConnectionArgs::default(), None);
        assert_eq!(settings.server, DEFAULT_SERVER);
        assert!(!settings.tls());
        assert!(settings.client_tls().unwrap().is_none());
        assert!(settings.bearer().unwrap().is_none());
    }

    #[test]
    fn tls_settings_that_cannot_work_are_usage_errors_naming_the_flag() {
        let mut settings = resolve(&ConnectionArgs::default(), None);
        settings.server = "https://stowage:8080".into();
        let error = settings.client_tls().unwrap_err().to_string();
        assert!(error.contains("--cacert"), "{error}");
        settings.cert = Some("/c.pem".into());
        let error = settings.client_tls().unwrap_err().to_string();
        assert!(error.contains("--key"), "{error}");
        settings.cert = None;
        settings.key = Some("/k.pem".into());
        let error = settings.client_tls().unwrap_err().to_string();
        assert!(error.contains("--cert"), "{error}");
        settings.key = None;
        settings.cacert = Some("/no/such/ca.pem".into());
        let error = settings.client_tls().unwrap_err().to_string();
        assert!(error.contains("/no/such/ca.pem"), "{error}");
        assert!(error.contains("--cacert"), "{error}");
    }

    #[test]
    fn the_token_is_the_first_line_that_is_not_a_comment_and_stays_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "# for the CLI\n\n  s3cret-token \nsecond\n").unwrap();
        let settings = Settings {
            token_file: Some(path.clone()),
            ..resolve(&ConnectionArgs::default(), None)
        };
        let value = settings.bearer().unwrap().unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer s3cret-token");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("s3cret"));
        std::fs::write(&path, "# nothing\n\n").unwrap();
        let error = settings.bearer().unwrap_err().to_string();
        assert!(error.contains("holds no token"), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
    }

    #[test]
    fn a_failed_connection_says_what_to_check() {
        let refused = unreachable(
            "http://127.0.0.1:1",
            false,
            "Connection refused (os error 111)".into(),
        );
        assert!(matches!(refused, CliError::Unreachable { .. }), "{refused}");
        let plaintext_at_tls = unreachable(
            "http://127.0.0.1:1",
            false,
            "connection closed before message completed".into(),
        );
        assert!(
            plaintext_at_tls.to_string().contains("--cacert"),
            "{plaintext_at_tls}"
        );
        let bad_cert = unreachable(
            "https://127.0.0.1:1",
            true,
            "invalid peer certificate: UnknownIssuer".into(),
        );
        assert!(bad_cert.to_string().contains("UnknownIssuer"), "{bad_cert}");
        assert!(bad_cert.to_string().contains("--cacert"), "{bad_cert}");
        let cut = unreachable("https://127.0.0.1:1", true, "operation was canceled".into());
        assert!(cut.to_string().contains("--cert/--key"), "{cut}");
    }
}
