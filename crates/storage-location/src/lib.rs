//! The backup storage location every stowage service agrees on: parsing `STOWAGE_STORAGE_URL`
//! (a local directory, `s3://`, `gs://`, `azure://`) and its S3 options, opening an
//! `object_store` for our own files, and mapping a namespace to its restic repository URL and
//! the environment restic needs to reach it.
//!
//! Layout inside a location (Velero's, plus our own `stowage/` prefix):
//! `backups/<name>/…` (backup metadata), `restic/<namespace>` (one restic repository per
//! namespace) and `stowage/…` (repo-manager state, kept beside and never inside the others).

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use object_store::{
    ObjectStore, aws::AmazonS3Builder, azure::MicrosoftAzureBuilder,
    gcp::GoogleCloudStorageBuilder, local::LocalFileSystem, prefix::PrefixStore,
};

mod fenced;

pub use fenced::FencedObjectStore;
pub use object_store;

#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("storage location `{url}` is not supported: {reason}")]
    Unsupported { url: String, reason: String },
    #[error("storage location `{url}` names no bucket or container")]
    MissingBucket { url: String },
    #[error("local storage location `{path}` must be an absolute path")]
    RelativePath { path: String },
    #[error("creating the local storage directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the AWS credentials file {path}: {source}")]
    CredentialsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the AWS credentials file {path} has no complete profile `{profile}`")]
    CredentialsProfile { path: PathBuf, profile: String },
    #[error("namespace `{0}` cannot name a restic repository (it must be a DNS-1123 label)")]
    InvalidNamespace(String),
    #[error("opening the object store for `{url}`: {source}")]
    ObjectStore {
        url: String,
        source: object_store::Error,
    },
}

/// S3 settings that are not part of the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// `http(s)://host:port` of an S3-compatible server; AWS when empty.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted buckets; what
    /// most S3-compatible servers need.
    pub path_style: bool,
}

/// Static S3 credentials. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl S3Credentials {
    /// Credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, else from the profile
    /// (`AWS_PROFILE`, default `default`) of `AWS_SHARED_CREDENTIALS_FILE`; `None` when
    /// neither is set, leaving the provider's own chain (instance roles) to both us and restic.
    pub fn resolve(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<S3Credentials>, LocationError> {
        let non_empty = |key: &str| lookup(key).filter(|value| !value.is_empty());
        if let (Some(access_key_id), Some(secret_access_key)) = (
            non_empty("AWS_ACCESS_KEY_ID"),
            non_empty("AWS_SECRET_ACCESS_KEY"),
        ) {
            return Ok(Some(S3Credentials {
                access_key_id,
                secret_access_key,
                session_token: non_empty("AWS_SESSION_TOKEN"),
            }));
        }
        let Some(file) = non_empty("AWS_SHARED_CREDENTIALS_FILE") else {
            return Ok(None);
        };
        let path = PathBuf::from(file);
        let text =
            std::fs::read_to_string(&path).map_err(|source| LocationError::CredentialsFile {
                path: path.clone(),
                source,
            })?;
        let profile = non_empty("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        parse_credentials_file(&text, &profile)
            .map(Some)
            .ok_or(LocationError::CredentialsProfile { path, profile })
    }
}

/// Reads one profile of an AWS shared credentials file (INI: `[profile]`, `key = value`).
fn parse_credentials_file(text: &str, profile: &str) -> Option<S3Credentials> {
    let mut in_profile = false;
    let mut values = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            in_profile = section == profile || section == format!("profile {profile}");
            continue;
        }
        if in_profile && let Some((key, value)) = line.split_once('=') {
            values.insert(key.trim().to_string(), value.trim().to_string());
        }
    }
    Some(S3Credentials {
        access_key_id: values.remove("aws_access_key_id")?,
        secret_access_key: values.remove("aws_secret_access_key")?,
        session_token: values.remove("aws_session_token"),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A local directory (the default for demos and tests).
    Local {
        root: PathBuf,
    },
    S3 {
        bucket: String,
        prefix: String,
        options: S3Options,
        credentials: Option<S3Credentials>,
    },
    Gcs {
        bucket: String,
        prefix: String,
    },
    Azure {
        container: String,
        prefix: String,
    },
}

/// One backup storage location, with everything needed to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageLocation {
    url: String,
    backend: Backend,
    /// Provider environment passed through to restic (GCS and Azure credentials).
    passthrough_env: BTreeMap<String, String>,
}

/// Environment variables restic reads for GCS and Azure; handed on when set here.
const PASSTHROUGH_ENV: &[&str] = &[
    "GOOGLE_PROJECT_ID",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_ACCOUNT_NAME",
    "AZURE_ACCOUNT_KEY",
    "AZURE_ACCOUNT_SAS",
];

/// Splits `bucket/some/prefix/` into (`bucket`, `some/prefix`).
fn bucket_and_prefix(url: &str, rest: &str) -> Result<(String, String), LocationError> {
    let rest = rest.trim_matches('/');
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(LocationError::MissingBucket {
            url: url.to_string(),
        });
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

impl StorageLocation {
    /// Parses `url` and resolves credentials from the process environment.
    pub fn from_env(url: &str, s3: S3Options) -> Result<Self, LocationError> {
        Self::parse_with(url, s3, |key| std::env::var(key).ok())
    }

    /// Parses `url`, reading credentials through `lookup` (the environment, in production).
    pub fn parse_with(
        url: &str,
        s3: S3Options,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, LocationError> {
        let trimmed = url.trim();
        let backend = if let Some(path) = trimmed.strip_prefix("file://") {
            local_backend(path)?
        } else if trimmed.starts_with('/') {
            local_backend(trimmed)?
        } else if let Some(rest) = trimmed.strip_prefix("s3://") {
            let (bucket, prefix) = bucket_and_prefix(url, rest)?;
            Backend::S3 {
                bucket,
                prefix,
                options: S3Options {
                    endpoint: s3
                        .endpoint
                        .map(|endpoint| endpoint.trim_end_matches('/').to_string())
                        .filter(|endpoint| !endpoint.is_empty()),
                    region: s3.region.filter(|region| !region.is_empty()),
                    path_style: s3.path_style,
                },
                credentials: S3Credentials::resolve(&lookup)?,
            }
        } else if let Some(rest) = trimmed.strip_prefix("gs://") {
            let (bucket, prefix) = bucket_and_prefix(url, rest)?;
            Backend::Gcs { bucket, prefix }
        } else if let Some(rest) = trimmed.strip_prefix("azure://") {
            let (container, prefix) = bucket_and_prefix(url, rest)?;
            Backend::Azure { container, prefix }
        } else {
            return Err(LocationError::Unsupported {
                url: url.to_string(),
                reason: "use file:///dir, /dir, s3://bucket[/prefix], gs://bucket[/prefix] \
                         or azure://container[/prefix]"
                    .into(),
            });
        };
        let passthrough_env = match backend {
            Backend::Gcs { .. } | Backend::Azure { .. } => PASSTHROUGH_ENV
                .iter()
                .filter_map(|key| lookup(key).map(|value| (key.to_string(), value)))
                .collect(),
            _ => BTreeMap::new(),
        };
        Ok(StorageLocation {
            url: trimmed.to_string(),
            backend,
            passthrough_env,
        })
    }

    /// The URL as configured (it never carries credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// restic's repository URL for `namespace`: `<dir>/restic/<ns>` locally,
    /// `s3:<endpoint>/<bucket>/<prefix>/restic/<ns>`, `gs:<bucket>:/<prefix>/restic/<ns>`,
    /// `azure:<container>:/<prefix>/restic/<ns>`.
    pub fn restic_repository(&self, namespace: &str) -> Result<String, LocationError> {
        if !is_dns1123_label(namespace) {
            return Err(LocationError::InvalidNamespace(namespace.to_string()));
        }
        let key = join(&[self.prefix(), "restic", namespace]);
        Ok(match &self.backend {
            Backend::Local { root } => root.join("restic").join(namespace).display().to_string(),
            Backend::S3 {
                bucket, options, ..
            } => {
                let endpoint = match (&options.endpoint, &options.region) {
                    (Some(endpoint), _) => endpoint.clone(),
                    (None, Some(region)) if region != "us-east-1" => {
                        format!("s3.{region}.amazonaws.com")
                    }
                    (None, _) => "s3.amazonaws.com".to_string(),
                };
                format!("s3:{endpoint}/{bucket}/{key}")
            }
            Backend::Gcs { bucket, .. } => format!("gs:{bucket}:/{key}"),
            Backend::Azure { container, .. } => format!("azure:{container}:/{key}"),
        })
    }

    /// Environment restic needs to reach the repository (object-store credentials, region).
    /// Sensitive: never log the values.
    pub fn restic_env(&self) -> BTreeMap<String, String> {
        let mut env = self.passthrough_env.clone();
        if let Backend::S3 {
            options,
            credentials,
            ..
        } = &self.backend
        {
            if let Some(credentials) = credentials {
                env.insert(
                    "AWS_ACCESS_KEY_ID".into(),
                    credentials.access_key_id.clone(),
                );
                env.insert(
                    "AWS_SECRET_ACCESS_KEY".into(),
                    credentials.secret_access_key.clone(),
                );
                if let Some(token) = &credentials.session_token {
                    env.insert("AWS_SESSION_TOKEN".into(), token.clone());
                }
            }
            if let Some(region) = &options.region {
                env.insert("AWS_DEFAULT_REGION".into(), region.clone());
            }
        }
        env
    }

    /// Key prefix of the location inside its bucket ("" locally: the root is the directory).
    fn prefix(&self) -> &str {
        match &self.backend {
            Backend::Local { .. } => "",
            Backend::S3 { prefix, .. }
            | Backend::Gcs { prefix, .. }
            | Backend::Azure { prefix, .. } => prefix,
        }
    }

    /// An object store rooted at the location (paths are `backups/…`, `restic/…`,
    /// `stowage/…`), whatever the provider.
    pub fn object_store(&self) -> Result<Arc<dyn ObjectStore>, LocationError> {
        let wrap = |source| LocationError::ObjectStore {
            url: self.url.clone(),
            source,
        };
        let store: Arc<dyn ObjectStore> = match &self.backend {
            Backend::Local { root } => {
                std::fs::create_dir_all(root).map_err(|source| LocationError::CreateDir {
                    path: root.clone(),
                    source,
                })?;
                return LocalFileSystem::new_with_prefix(root)
                    .map(|store| Arc::new(store) as Arc<dyn ObjectStore>)
                    .map_err(wrap);
            }
            Backend::S3 {
                bucket,
                options,
                credentials,
                ..
            } => {
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(options.region.as_deref().unwrap_or("us-east-1"))
                    .with_virtual_hosted_style_request(!options.path_style);
                if let Some(endpoint) = &options.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(credentials) = credentials {
                    builder = builder
                        .with_access_key_id(&credentials.access_key_id)
                        .with_secret_access_key(&credentials.secret_access_key);
                    if let Some(token) = &credentials.session_token {
                        builder = builder.with_token(token);
                    }
                }
                Arc::new(builder.build().map_err(wrap)?)
            }
            Backend::Gcs { bucket, .. } => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(wrap)?,
            ),
            Backend::Azure { container, .. } => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .build()
                    .map_err(wrap)?,
            ),
        };
        let prefix = self.prefix();
        Ok(if prefix.is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        })
    }
}

fn local_backend(path: &str) -> Result<Backend, LocationError> {
    let root = Path::new(path);
    if !root.is_absolute() {
        return Err(LocationError::RelativePath {
            path: path.to_string(),
        });
    }
    // Trailing slashes would double up in restic URLs.
    let trimmed = path.trim_end_matches('/');
    Ok(Backend::Local {
        root: PathBuf::from(if trimmed.is_empty() { "/" } else { trimmed }),
    })
}

fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|part| !part.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}

/// A Kubernetes namespace name: a DNS-1123 label (lowercase alphanumerics and `-`, starting
/// and ending alphanumeric, at most 63 characters). Anything else could escape `restic/` in a
/// path or URL, so it is checked before it names a repository. The rule is the one every
/// stowage process shares (`stowage_contract::names`).
pub fn is_dns1123_label(name: &str) -> bool {
    stowage_contract::names::is_namespace(name)
}

/// A backup or restore name: dot-separated DNS-1123 labels, at most 63 characters in all (it
/// is also a label value, `velero.io/backup-name`). It names `backups/<name>/` in the bucket,
/// so nothing else may reach a key.
pub fn is_backup_name(name: &str) -> bool {
    stowage_contract::names::is_run_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key| map.get(key).cloned()
    }

    fn parse(url: &str, s3: S3Options) -> StorageLocation {
        StorageLocation::parse_with(url, s3, env(&[])).expect("valid location")
    }

    #[test]
    fn local_urls_map_to_restic_paths_under_restic_dir() {
        for url in ["file:///var/stowage", "/var/stowage", "/var/stowage/"] {
            let location = parse(url, S3Options::default());
            assert_eq!(
                location.restic_repository("team-a").unwrap(),
                "/var/stowage/restic/team-a",
                "{url}"
            );
            assert!(location.restic_env().is_empty());
        }
    }

    #[test]
    fn relative_local_paths_and_unknown_schemes_are_refused() {
        assert!(matches!(
            StorageLocation::parse_with("file://var/x", S3Options::default(), env(&[])),
            Err(LocationError::RelativePath { .. })
        ));
        assert!(matches!(
            StorageLocation::parse_with("ftp://host/x", S3Options::default(), env(&[])),
            Err(LocationError::Unsupported { .. })
        ));
        assert!(matches!(
            StorageLocation::parse_with("s3://", S3Options::default(), env(&[])),
            Err(LocationError::MissingBucket { .. })
        ));
    }

    #[test]
    fn s3_with_custom_endpoint_and_prefix() {
        let location = parse(
            "s3://velero/cluster-1/",
            S3Options {
                endpoint: Some("http://127.0.0.1:9000/".into()),
                region: Some("minio".into()),
                path_style: true,
            },
        );
        assert_eq!(
            location.restic_repository("default").unwrap(),
            "s3:http://127.0.0.1:9000/velero/cluster-1/restic/default"
        );
        assert_eq!(
            location
                .restic_env()
                .get("AWS_DEFAULT_REGION")
                .map(String::as_str),
            Some("minio")
        );
    }

    #[test]
    fn s3_without_endpoint_uses_aws_hosts() {
        let plain = parse("s3://bucket", S3Options::default());
        assert_eq!(
            plain.restic_repository("ns").unwrap(),
            "s3:s3.amazonaws.com/bucket/restic/ns"
        );
        let regional = parse(
            "s3://bucket/p",
            S3Options {
                region: Some("eu-west-1".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            regional.restic_repository("ns").unwrap(),
            "s3:s3.eu-west-1.amazonaws.com/bucket/p/restic/ns"
        );
    }

    #[test]
    fn gcs_and_azure_map_to_restic_url_forms() {
        let gcs = parse("gs://bkt/pre/fix", S3Options::default());
        assert_eq!(
            gcs.restic_repository("ns").unwrap(),
            "gs:bkt:/pre/fix/restic/ns"
        );
        let azure = parse("azure://cont", S3Options::default());
        assert_eq!(
            azure.restic_repository("ns").unwrap(),
            "azure:cont:/restic/ns"
        );
    }

    #[test]
    fn s3_credentials_come_from_env_before_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n\
             [other]\naws_access_key_id=OTHER\naws_secret_access_key=othersecret\n",
        )
        .unwrap();
        let file = file.display().to_string();

        let from_env = StorageLocation::parse_with(
            "s3://b",
            S3Options::default(),
            env(&[
                ("AWS_ACCESS_KEY_ID", "ENVKEY"),
                ("AWS_SECRET_ACCESS_KEY", "envsecret"),
                ("AWS_SHARED_CREDENTIALS_FILE", &file),
            ]),
        )
        .unwrap();
        assert_eq!(
            from_env
                .restic_env()
                .get("AWS_ACCESS_KEY_ID")
                .map(String::as_str),
            Some("ENVKEY")
        );

        let from_file = StorageLocation::parse_with(
            "s3://b",
            S3Options::default(),
            env(&[
                ("AWS_SHARED_CREDENTIALS_FILE", &file),
                ("AWS_PROFILE", "other"),
            ]),
        )
        .unwrap();
        let restic_env = from_file.restic_env();
        assert_eq!(restic_env["AWS_ACCESS_KEY_ID"], "OTHER");
        assert_eq!(restic_env["AWS_SECRET_ACCESS_KEY"], "othersecret");

        let missing = StorageLocation::parse_with(
            "s3://b",
            S3Options::default(),
            env(&[
                ("AWS_SHARED_CREDENTIALS_FILE", &file),
                ("AWS_PROFILE", "nope"),
            ]),
        );
        assert!(matches!(
            missing,
            Err(LocationError::CredentialsProfile { .. })
        ));
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let credentials = S3Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
            session_token: None,
        };
        assert!(!format!("{credentials:?}").contains("very-secret"));
    }

    #[test]
    fn namespace_names_must_be_dns_labels() {
        for good in ["a", "default", "team-1", &"x".repeat(63)] {
            assert!(is_dns1123_label(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "../x",
            "a/b",
            &"x".repeat(64),
        ] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        for good in ["nightly", "backup-2024.01.01", "a"] {
            assert!(is_backup_name(good), "{good}");
        }
        for bad in [
            "",
            "../nightly",
            "a/b",
            "a..b",
            ".a",
            "Nightly",
            &"x".repeat(64),
        ] {
            assert!(!is_backup_name(bad), "{bad}");
        }
        let location = parse("/tmp/x", S3Options::default());
        assert!(matches!(
            location.restic_repository("../etc"),
            Err(LocationError::InvalidNamespace(_))
        ));
    }

    #[tokio::test]
    async fn local_object_store_is_rooted_at_the_directory() {
        use object_store::{ObjectStoreExt, PutPayload, path::Path as ObjectPath};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("location");
        let location = parse(&format!("file://{}", root.display()), S3Options::default());
        let store = location.object_store().unwrap();
        store
            .put(
                &ObjectPath::from("stowage/repositories/a.json"),
                PutPayload::from_static(b"{}"),
            )
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(root.join("stowage/repositories/a.json")).unwrap(),
            b"{}"
        );
    }
}
