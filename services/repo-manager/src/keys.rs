//! Repository passwords: one random password per namespace, kept in a Kubernetes Secret in the
//! stowage namespace when a Kubernetes API is configured, and always also in the storage
//! location under `stowage/keys/<namespace>.json`, sealed with the master key (AES-256-GCM,
//! the namespace as associated data so a sealed password cannot be moved to another
//! namespace). The bucket copy is how a fresh cluster regains access after a disaster: point a
//! new repo-manager with the same master key at the same location and the Secrets are
//! recreated from it on first use.

use std::{collections::BTreeMap, fmt, sync::Arc};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom as _, SystemRandom},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use stowage_storage_location::object_store::{
    ObjectStore, ObjectStoreExt as _, PutPayload, path::Path,
};

use crate::{error::RepoError, state::read_optional};

pub const KEYS_PREFIX: &str = "stowage/keys";
const SECRET_PASSWORD_KEY: &str = "repository-password";
const SECRET_PENDING_KEY: &str = "pending-password";

/// A namespace's passwords. `pending` is set only while a key rotation is under way, so a
/// crash between `restic key add` and saving the new password loses nothing.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passwords {
    pub current: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passwords(<redacted>)")
    }
}

/// A new random repository password: 32 bytes from the OS generator, hex-encoded.
pub fn generate_password() -> Result<String, RepoError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RepoError::Random)?;
    Ok(hex::encode(bytes))
}

/// The key that seals the bucket copies. Any secret text works: the AES key is its SHA-256.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn from_secret_text(text: &str) -> MasterKey {
        MasterKey(Sha256::digest(text.trim().as_bytes()).into())
    }

    fn key(&self) -> LessSafeKey {
        // 32 bytes is always a valid AES-256 key length.
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("AES-256 key is 32 bytes"))
    }

    fn seal(
        &self,
        namespace: &str,
        plaintext: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), RepoError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| RepoError::Random)?;
        let mut sealed = plaintext.to_vec();
        self.key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(namespace.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| RepoError::Random)?;
        Ok((nonce, sealed))
    }

    fn open(&self, namespace: &str, nonce: &[u8], sealed: &[u8]) -> Result<Vec<u8>, RepoError> {
        let mismatch = || RepoError::MasterKeyMismatch(namespace.to_string());
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| mismatch())?;
        let mut buffer = sealed.to_vec();
        let plaintext = self
            .key()
            .open_in_place(nonce, Aad::from(namespace.as_bytes()), &mut buffer)
            .map_err(|_| mismatch())?;
        Ok(plaintext.to_vec())
    }
}

/// The bucket copy's format.
#[derive(Debug, Serialize, Deserialize)]
struct SealedFile {
    version: u32,
    namespace: String,
    /// `AES-256-GCM`, or `none` when no master key was configured.
    encryption: String,
    #[serde(default)]
    nonce: String,
    /// base64 of the sealed (or plain) JSON of [`Passwords`].
    data: String,
}

const AES_256_GCM_NAME: &str = "AES-256-GCM";
const PLAIN_NAME: &str = "none";

fn seal_file(
    master: Option<&MasterKey>,
    namespace: &str,
    passwords: &Passwords,
) -> Result<Vec<u8>, RepoError> {
    let plaintext = serde_json::to_vec(passwords).map_err(|error| RepoError::Corrupt {
        path: key_path(namespace).to_string(),
        reason: error.to_string(),
    })?;
    let file = match master {
        Some(master) => {
            let (nonce, sealed) = master.seal(namespace, &plaintext)?;
            SealedFile {
                version: 1,
                namespace: namespace.to_string(),
                encryption: AES_256_GCM_NAME.into(),
                nonce: BASE64.encode(nonce),
                data: BASE64.encode(sealed),
            }
        }
        None => SealedFile {
            version: 1,
            namespace: namespace.to_string(),
            encryption: PLAIN_NAME.into(),
            nonce: String::new(),
            data: BASE64.encode(plaintext),
        },
    };
    serde_json::to_vec_pretty(&file).map_err(|error| RepoError::Corrupt {
        path: key_path(namespace).to_string(),
        reason: error.to_string(),
    })
}

fn open_file(
    master: Option<&MasterKey>,
    namespace: &str,
    bytes: &[u8],
) -> Result<Passwords, RepoError> {
    let corrupt = |reason: String| RepoError::Corrupt {
        path: key_path(namespace).to_string(),
        reason,
    };
    let file: SealedFile =
        serde_json::from_slice(bytes).map_err(|error| corrupt(error.to_string()))?;
    if file.namespace != namespace {
        return Err(corrupt(format!(
            "it belongs to namespace `{}`",
            file.namespace
        )));
    }
    let data = BASE64
        .decode(&file.data)
        .map_err(|error| corrupt(error.to_string()))?;
    let plaintext = match file.encryption.as_str() {
        AES_256_GCM_NAME => {
            let master = master.ok_or_else(|| RepoError::MasterKeyMissing(namespace.into()))?;
            let nonce = BASE64
                .decode(&file.nonce)
                .map_err(|error| corrupt(error.to_string()))?;
            master.open(namespace, &nonce, &data)?
        }
        PLAIN_NAME => data,
        other => return Err(corrupt(format!("unknown encryption `{other}`"))),
    };
    serde_json::from_slice(&plaintext).map_err(|error| corrupt(error.to_string()))
}

fn key_path(namespace: &str) -> Path {
    Path::from(format!("{KEYS_PREFIX}/{namespace}.json"))
}

/// Where the Secrets go when a Kubernetes API is configured.
#[derive(Clone)]
pub struct SecretStore {
    pub client: kube::Client,
    /// The stowage namespace, where the Secrets live.
    pub namespace: String,
}

/// The name of the Secret holding `namespace`'s repository password.
pub fn secret_name(namespace: &str) -> String {
    format!("stowage-repo-{namespace}")
}

impl SecretStore {
    fn api(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn load(&self, namespace: &str) -> Result<Option<Passwords>, RepoError> {
        let name = secret_name(namespace);
        let secret = self
            .api()
            .get_opt(&name)
            .await
            .map_err(|source| RepoError::Kubernetes {
                name: name.clone(),
                source,
            })?;
        let Some(data) = secret.and_then(|secret| secret.data) else {
            return Ok(None);
        };
        let text = |key: &str| {
            data.get(key)
                .map(|value| String::from_utf8_lossy(&value.0).into_owned())
        };
        Ok(text(SECRET_PASSWORD_KEY).map(|current| Passwords {
            current,
            pending: text(SECRET_PENDING_KEY),
        }))
    }

    async fn save(&self, namespace: &str, passwords: &Passwords) -> Result<(), RepoError> {
        let name = secret_name(namespace);
        let mut data = BTreeMap::new();
        data.insert(
            SECRET_PASSWORD_KEY.to_string(),
            ByteString(passwords.current.clone().into_bytes()),
        );
        if let Some(pending) = &passwords.pending {
            data.insert(
                SECRET_PENDING_KEY.to_string(),
                ByteString(pending.clone().into_bytes()),
            );
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "stowage".to_string(),
                    ),
                    ("stowage.io/namespace".to_string(), namespace.to_string()),
                ])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Default::default()
        };
        // Create or replace (not server-side apply): the plain verbs every API server and
        // emulator serves. Calls for one namespace are serialised by the caller.
        let api = self.api();
        let existing = api
            .get_opt(&name)
            .await
            .map_err(|source| RepoError::Kubernetes {
                name: name.clone(),
                source,
            })?;
        let result = match existing {
            None => api.create(&PostParams::default(), &secret).await,
            Some(existing) => {
                let mut secret = secret;
                secret.metadata.resource_version = existing.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &secret).await
            }
        };
        result.map_err(|source| RepoError::Kubernetes { name, source })?;
        Ok(())
    }
}

/// Loads and saves namespace passwords: the Secret first when there is one, the bucket copy
/// always.
#[derive(Clone)]
pub struct KeyStore {
    store: Arc<dyn ObjectStore>,
    master: Option<MasterKey>,
    secrets: Option<SecretStore>,
}

impl KeyStore {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        master: Option<MasterKey>,
        secrets: Option<SecretStore>,
    ) -> Self {
        KeyStore {
            store,
            master,
            secrets,
        }
    }

    /// The namespace's passwords, or `None` when it has none yet. A bucket copy found while
    /// the Secret is missing (a fresh cluster) is written back to the Secret.
    pub async fn load(&self, namespace: &str) -> Result<Option<Passwords>, RepoError> {
        if let Some(secrets) = &self.secrets
            && let Some(passwords) = secrets.load(namespace).await?
        {
            return Ok(Some(passwords));
        }
        let path = key_path(namespace);
        let Some(bytes) = read_optional(&*self.store, &path).await? else {
            return Ok(None);
        };
        let passwords = open_file(self.master.as_ref(), namespace, &bytes)?;
        if let Some(secrets) = &self.secrets {
            tracing::info!(
                namespace,
                "recreating the password Secret from the bucket copy"
            );
            secrets.save(namespace, &passwords).await?;
        }
        Ok(Some(passwords))
    }

    /// Saves the bucket copy first (it is the one that survives the cluster), then the Secret.
    pub async fn save(&self, namespace: &str, passwords: &Passwords) -> Result<(), RepoError> {
        let path = key_path(namespace);
        let body = seal_file(self.master.as_ref(), namespace, passwords)?;
        self.store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|source| RepoError::Store {
                operation: "write",
                path: path.to_string(),
                source,
            })?;
        if let Some(secrets) = &self.secrets {
            secrets.save(namespace, passwords).await?;
        }
        Ok(())
    }

    pub fn secret_name(&self, namespace: &str) -> String {
        if self.secrets.is_some() {
            secret_name(namespace)
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use stowage_storage_location::object_store::memory::InMemory;

    use super::*;

    fn passwords(current: &str) -> Passwords {
        Passwords {
            current: current.into(),
            pending: None,
        }
    }

    #[test]
    fn generated_passwords_are_long_and_different() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn sealed_copy_hides_the_password_and_opens_with_the_master_key() {
        let master = MasterKey::from_secret_text("correct horse");
        let sealed = seal_file(Some(&master), "team-a", &passwords("p4ssw0rd-xyz")).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("p4ssw0rd-xyz"));
        let opened = open_file(Some(&master), "team-a", &sealed).unwrap();
        assert_eq!(opened.current, "p4ssw0rd-xyz");
    }

    #[test]
    fn wrong_master_key_or_moved_file_does_not_open() {
        let master = MasterKey::from_secret_text("correct horse");
        let sealed = seal_file(Some(&master), "team-a", &passwords("pw")).unwrap();
        let other = MasterKey::from_secret_text("battery staple");
        assert!(matches!(
            open_file(Some(&other), "team-a", &sealed),
            Err(RepoError::MasterKeyMismatch(_))
        ));
        assert!(matches!(
            open_file(None, "team-a", &sealed),
            Err(RepoError::MasterKeyMissing(_))
        ));
        // Copied under another namespace's name: the namespace is bound into the seal.
        let mut file: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        file["namespace"] = "team-b".into();
        let moved = serde_json::to_vec(&file).unwrap();
        assert!(open_file(Some(&master), "team-b", &moved).is_err());
    }

    #[tokio::test]
    async fn bucket_store_round_trips_and_keeps_pending_password() {
        let store = KeyStore::new(
            Arc::new(InMemory::new()),
            Some(MasterKey::from_secret_text("m")),
            None,
        );
        assert!(store.load("ns").await.unwrap().is_none());
        let saved = Passwords {
            current: "old".into(),
            pending: Some("new".into()),
        };
        store.save("ns", &saved).await.unwrap();
        assert_eq!(store.load("ns").await.unwrap(), Some(saved));
        assert!(store.load("other").await.unwrap().is_none());
        assert!(!format!("{:?}", store.load("ns").await.unwrap()).contains("old"));
    }
}
