//! Transport security and caller authentication, shared by every stowage server and client:
//! the `--tls-*` flags, server mTLS, client TLS for outgoing channels, and the tower layer that
//! admits a request only from an allowed client certificate identity or with a bearer token.
//!
//! Plaintext stays the default (no certificate files given), so local runs and tests work
//! without a PKI; a deployment mounts the certificates from a Secret and sets the flags.

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::{
    Certificate, ClientTlsConfig, Identity, ServerTlsConfig, server::TcpConnectInfo,
    server::TlsConnectInfo,
};

/// Calls to these services need no caller identity: probes must work without a certificate.
const UNAUTHENTICATED_SERVICES: &[&str] = &["grpc.health.v1.Health"];

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("reading {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "TLS needs --tls-cert, --tls-key and --tls-ca together (missing: {missing}); \
         give all three, or --tls-disabled for plaintext"
    )]
    Incomplete { missing: String },
    #[error("`{0}` is not a DNS name a certificate can carry")]
    InvalidIdentity(String),
    #[error("the bearer token file {} holds no token", .0.display())]
    NoTokens(PathBuf),
    #[error("the client TLS settings were already installed in this process")]
    ClientTlsInstalled,
}

/// The security flags of every stowage binary.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate this process presents, as server and as client. With --tls-key and
    /// --tls-ca it turns on mutual TLS; without them the process speaks plaintext.
    #[arg(long, env = "STOWAGE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "STOWAGE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the CA that signs the certificates of callers and of called servers.
    #[arg(long, env = "STOWAGE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Name to verify in the certificates of the servers this process calls, when they are
    /// addressed by IP (volume agents are reached by pod IP); unset = the host of the URL.
    #[arg(long, env = "STOWAGE_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// Client identities (DNS names in the certificate's subjectAltName) allowed to call this
    /// server, comma-separated; empty = any certificate the CA signed.
    #[arg(long, env = "STOWAGE_TLS_ALLOWED_CLIENTS", value_delimiter = ',')]
    pub tls_allowed_clients: Vec<String>,
    /// File with bearer tokens (one per line) that external API callers may present instead of
    /// a client certificate (`authorization: Bearer <token>`).
    #[arg(long, env = "STOWAGE_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Plaintext even when certificate files are given, for local runs.
    #[arg(long, env = "STOWAGE_TLS_DISABLED")]
    pub tls_disabled: bool,
}

/// The certificate files, read.
struct TlsFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

impl TlsArgs {
    fn files(&self) -> Result<Option<TlsFiles>, SecurityError> {
        if self.tls_disabled {
            return Ok(None);
        }
        let given = [
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
            ("--tls-ca", &self.tls_ca),
        ];
        let missing: Vec<&str> = given
            .iter()
            .filter(|(_, path)| path.is_none())
            .map(|(flag, _)| *flag)
            .collect();
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
                cert: read("the TLS certificate", cert)?,
                key: read("the TLS key", key)?,
                ca: read("the TLS CA bundle", ca)?,
            })),
            (None, None, None) => Ok(None),
            _ => Err(SecurityError::Incomplete {
                missing: missing.join(", "),
            }),
        }
    }

    fn tokens(&self) -> Result<Vec<String>, SecurityError> {
        let Some(path) = &self.auth_token_file else {
            return Ok(Vec::new());
        };
        let text = read("the bearer token file", path)?;
        let tokens: Vec<String> = String::from_utf8_lossy(&text)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_string)
            .collect();
        if tokens.is_empty() {
            return Err(SecurityError::NoTokens(path.clone()));
        }
        Ok(tokens)
    }

    /// How this process serves: TLS (client certificates required unless bearer tokens are
    /// configured, which external callers present instead) and who is admitted.
    pub fn server(&self) -> Result<ServerSecurity, SecurityError> {
        self.server_allowing(&[])
    }

    /// [`TlsArgs::server`] admitting only `default_clients` when --tls-allowed-clients is not
    /// given: a service that only other stowage services call names them here.
    pub fn server_allowing(
        &self,
        default_clients: &[&str],
    ) -> Result<ServerSecurity, SecurityError> {
        install_crypto_provider();
        let files = self.files()?;
        let tokens = self.tokens()?;
        let names: Vec<&str> = if self.tls_allowed_clients.is_empty() {
            default_clients.to_vec()
        } else {
            self.tls_allowed_clients
                .iter()
                .map(String::as_str)
                .collect()
        };
        let allowed = names
            .into_iter()
            .map(|name| name.trim())
            .filter(|name| !name.is_empty())
            .map(|name| {
                ServerName::try_from(name.to_string())
                    .map_err(|_| SecurityError::InvalidIdentity(name.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tls = files.map(|files| {
            ServerTlsConfig::new()
                .identity(Identity::from_pem(files.cert, files.key))
                .client_ca_root(Certificate::from_pem(files.ca))
                .client_auth_optional(!tokens.is_empty())
        });
        Ok(ServerSecurity {
            policy: Arc::new(AuthPolicy {
                tls: tls.is_some(),
                allowed,
                tokens,
            }),
            tls,
        })
    }

    /// The TLS settings of this process's outgoing channels, verifying every server under
    /// --tls-server-name when it is set; `None` for plaintext.
    pub fn client(&self) -> Result<Option<ClientTlsConfig>, SecurityError> {
        Ok(self.client_tls()?.map(|tls| tls.by_ip))
    }

    fn client_tls(&self) -> Result<Option<ClientTls>, SecurityError> {
        install_crypto_provider();
        Ok(self.files()?.map(|files| {
            let by_name = ClientTlsConfig::new()
                .identity(Identity::from_pem(files.cert, files.key))
                .ca_certificate(Certificate::from_pem(files.ca));
            let by_ip = match &self.tls_server_name {
                Some(name) => by_name.clone().domain_name(name.clone()),
                None => by_name.clone(),
            };
            ClientTls { by_name, by_ip }
        }))
    }

    /// Makes [`crate::connect`] and [`crate::connect_lazy`] use this process's client TLS, so
    /// code that opens channels deep inside a service needs no TLS plumbing. Servers addressed
    /// by IP are verified under --tls-server-name, the others under the host of their URL.
    /// Call once in `main`, before any channel is opened.
    pub fn install_client_tls(&self) -> Result<(), SecurityError> {
        let client = self.client_tls()?;
        CLIENT_TLS
            .set(client)
            .map_err(|_| SecurityError::ClientTlsInstalled)
    }
}

/// Client TLS for the two ways a server is addressed. A server reached by IP (an agent at its
/// pod IP) has no name to check, so it is checked under --tls-server-name; one reached by a
/// DNS name (the repo-manager's Service) is checked under that name, so another service's
/// certificate cannot stand in for it.
#[derive(Clone)]
struct ClientTls {
    by_name: ClientTlsConfig,
    by_ip: ClientTlsConfig,
}

/// Whether the host of `address` (a URL or `host:port`) is an IP address.
fn addressed_by_ip(address: &str) -> bool {
    let host = match address.parse::<http::Uri>() {
        Ok(uri) => uri.host().map(str::to_string),
        Err(_) => None,
    };
    host.is_some_and(|host| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
    })
}

/// tonic's TLS server takes rustls' process-wide provider, which rustls cannot pick when the
/// workspace links both ring and aws-lc-rs; stowage uses ring, as tonic's client does.
fn install_crypto_provider() {
    // Err means one is installed already (a binary chose first), which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

static CLIENT_TLS: OnceLock<Option<ClientTls>> = OnceLock::new();

/// The client TLS installed by [`TlsArgs::install_client_tls`] for dialling `address`, if any.
pub fn installed_client_tls(address: &str) -> Option<ClientTlsConfig> {
    let tls = CLIENT_TLS.get()?.as_ref()?;
    Some(if addressed_by_ip(address) {
        tls.by_ip.clone()
    } else {
        tls.by_name.clone()
    })
}

/// What [`crate::secured_router_for`] needs: the server TLS config and the admission policy.
#[derive(Clone)]
pub struct ServerSecurity {
    pub(crate) tls: Option<ServerTlsConfig>,
    pub(crate) policy: Arc<AuthPolicy>,
}

impl ServerSecurity {
    /// Plaintext, everyone admitted: local runs and tests.
    pub fn plaintext() -> ServerSecurity {
        ServerSecurity {
            tls: None,
            policy: Arc::new(AuthPolicy::default()),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

impl std::fmt::Debug for ServerSecurity {
    // Never print the tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSecurity")
            .field("tls", &self.policy.tls)
            .field("allowed_clients", &self.policy.allowed)
            .field("bearer_tokens", &self.policy.tokens.len())
            .finish()
    }
}

/// Who may call.
#[derive(Default)]
pub(crate) struct AuthPolicy {
    tls: bool,
    allowed: Vec<ServerName<'static>>,
    tokens: Vec<String>,
}

/// Why a request was refused; becomes its gRPC status.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Unauthenticated(&'static str),
    PermissionDenied(String),
}

/// Compares without stopping at the first differing byte, so response time does not reveal
/// how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AuthPolicy {
    fn admits(
        &self,
        service: &str,
        authorization: Option<&[u8]>,
        peer_certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<(), Refusal> {
        if UNAUTHENTICATED_SERVICES.contains(&service) {
            return Ok(());
        }
        if let Some(value) = authorization
            && !self.tokens.is_empty()
        {
            let token = value.strip_prefix(b"Bearer ").unwrap_or(b"");
            return if self
                .tokens
                .iter()
                .any(|known| constant_time_eq(known.as_bytes(), token))
            {
                Ok(())
            } else {
                Err(Refusal::Unauthenticated("the bearer token is not accepted"))
            };
        }
        match peer_certs.and_then(|certs| certs.first()) {
            // rustls has already verified the chain against the CA.
            Some(cert) => self.identity_allowed(cert),
            None if !self.tls && self.tokens.is_empty() => Ok(()),
            None => Err(Refusal::Unauthenticated(
                "a client certificate or a bearer token is required",
            )),
        }
    }

    fn identity_allowed(&self, cert: &CertificateDer<'static>) -> Result<(), Refusal> {
        if self.allowed.is_empty() {
            return Ok(());
        }
        let parsed = webpki::EndEntityCert::try_from(cert).map_err(|_| {
            Refusal::PermissionDenied("the client certificate cannot be parsed".into())
        })?;
        if self
            .allowed
            .iter()
            .any(|name| parsed.verify_is_valid_for_subject_name(name).is_ok())
        {
            Ok(())
        } else {
            let allowed: Vec<String> = self
                .allowed
                .iter()
                .map(|n| n.to_str().into_owned())
                .collect();
            Err(Refusal::PermissionDenied(format!(
                "the client certificate is not one of the identities allowed to call this \
                 service ({})",
                allowed.join(", ")
            )))
        }
    }
}

/// Refuses requests the [`AuthPolicy`] does not admit, before they reach a handler.
#[derive(Clone)]
pub struct AuthLayer {
    policy: Arc<AuthPolicy>,
}

impl AuthLayer {
    pub(crate) fn new(policy: Arc<AuthPolicy>) -> Self {
        AuthLayer { policy }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    policy: Arc<AuthPolicy>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let service = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs());
        let verdict = self.policy.admits(
            service,
            request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|value| value.as_bytes()),
            certs.as_deref().map(Vec::as_slice),
        );
        match verdict {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(refusal) => {
                let status = match refusal {
                    Refusal::Unauthenticated(why) => tonic::Status::unauthenticated(why),
                    Refusal::PermissionDenied(why) => tonic::Status::permission_denied(why),
                };
                tracing::warn!(rpc = %path, code = ?status.code(), reason = status.message(), "caller refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tls: bool, tokens: &[&str]) -> AuthPolicy {
        AuthPolicy {
            tls,
            allowed: Vec::new(),
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn plaintext_without_tokens_admits_everyone() {
        assert_eq!(
            policy(false, &[]).admits("stowage.v1.VolumeAgent", None, None),
            Ok(())
        );
    }

    #[test]
    fn tls_without_a_certificate_or_token_is_unauthenticated_except_health() {
        let policy = policy(true, &["s3cret"]);
        assert!(matches!(
            policy.admits("stowage.v1.Orchestrator", None, None),
            Err(Refusal::Unauthenticated(_))
        ));
        assert_eq!(policy.admits("grpc.health.v1.Health", None, None), Ok(()));
    }

    #[test]
    fn bearer_tokens_are_matched_exactly() {
        let policy = policy(false, &["s3cret"]);
        let service = "stowage.v1.Orchestrator";
        assert_eq!(policy.admits(service, Some(b"Bearer s3cret"), None), Ok(()));
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"s3cret",
            b"Basic s3cret",
        ] {
            assert!(
                matches!(
                    policy.admits(service, Some(wrong), None),
                    Err(Refusal::Unauthenticated(_))
                ),
                "{}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(policy.admits(service, None, None).is_err());
    }

    fn certificate(identity: &str) -> CertificateDer<'static> {
        rcgen::generate_simple_self_signed(vec![identity.to_string()])
            .unwrap()
            .cert
            .der()
            .clone()
    }

    #[test]
    fn certificate_identities_are_matched_against_the_allow_list() {
        let policy = AuthPolicy {
            tls: true,
            allowed: ["stowage-orchestrator", "stowage-repo-manager"]
                .map(|name| ServerName::try_from(name.to_string()).unwrap())
                .to_vec(),
            tokens: Vec::new(),
        };
        let agent = "stowage.v1.VolumeAgent";
        for caller in ["stowage-orchestrator", "stowage-repo-manager"] {
            assert_eq!(
                policy.admits(agent, None, Some(&[certificate(caller)])),
                Ok(()),
                "{caller}"
            );
        }
        let refusal = policy
            .admits(
                agent,
                None,
                Some(&[certificate("stowage-orchestrator.evil")]),
            )
            .unwrap_err();
        match refusal {
            Refusal::PermissionDenied(message) => {
                assert!(
                    message.contains("stowage-orchestrator, stowage-repo-manager"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        let open = AuthPolicy {
            allowed: Vec::new(),
            ..policy
        };
        assert_eq!(
            open.admits(agent, None, Some(&[certificate("anyone")])),
            Ok(())
        );
    }

    #[test]
    fn partial_tls_flags_name_what_is_missing() {
        let args = TlsArgs {
            tls_cert: Some("/c.pem".into()),
            ..Default::default()
        };
        let error = args.server().unwrap_err().to_string();
        assert!(error.contains("--tls-key, --tls-ca"), "{error}");
        let disabled = TlsArgs {
            tls_disabled: true,
            ..args
        };
        assert!(!disabled.server().unwrap().is_tls());
    }

    #[test]
    fn allowed_identities_must_be_dns_names() {
        let args = TlsArgs {
            tls_allowed_clients: vec!["stowage-orchestrator".into(), "not a name".into()],
            ..Default::default()
        };
        let error = args.server().unwrap_err().to_string();
        assert!(error.contains("`not a name`"), "{error}");
    }

    #[test]
    fn only_servers_addressed_by_ip_need_the_configured_server_name() {
        for address in [
            "http://10.42.0.7:8082",
            "https://[fd00::7]:8082",
            "127.0.0.1:8082",
        ] {
            assert!(addressed_by_ip(address), "{address}");
        }
        for address in [
            "http://stowage-repo-manager.stowage.svc:8081",
            "https://localhost:8081",
            "not a url",
        ] {
            assert!(!addressed_by_ip(address), "{address}");
        }
    }

    #[test]
    fn token_file_secrets_stay_out_of_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# external callers\ntoken-one\n\ntoken-two\n").unwrap();
        let security = TlsArgs {
            auth_token_file: Some(file),
            ..Default::default()
        }
        .server()
        .unwrap();
        assert_eq!(security.policy.tokens, ["token-one", "token-two"]);
        let debug = format!("{security:?}");
        assert!(
            !debug.contains("token-one") && debug.contains("bearer_tokens: 2"),
            "{debug}"
        );
    }
}
