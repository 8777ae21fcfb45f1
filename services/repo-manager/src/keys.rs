//! Repository passwords: one random password per namespace, kept in a Kubernetes Secret in the
//! stowage namespace when a Kubernetes API is configured, and always also in the storage
//! location under `stowage/keys/<namespace>.json`, sealed with the master key (AES-256-GCM,
//! the namespace as associated data so a sealed password cannot be moved to another
//! namespace). The bucket copy is how a fresh cluster regains access after a disaster: point a
//! new repo-manager with the same master key at the same location and the Secrets are
//! recreated from it on first use. A copy is only ever written sealed; unsealed copies that
//! earlier versions wrote without a master key are read, and written again sealed.

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

use futures::TryStreamExt as _;

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
    /// `AES-256-GCM`; `none` in copies earlier versions wrote without a master key, which are
    /// still read but never written.
    encryption: String,
    #[serde(default)]
    nonce: String,
    /// base64 of the sealed (or plain) JSON of [`Passwords`].
    data: String,
}

const AES_256_GCM_NAME: &str = "AES-256-GCM";
const PLAIN_NAME: &str = "none";

fn seal_file(
    master: &MasterKey,
    namespace: &str,
    passwords: &Passwords,
) -> Result<Vec<u8>, RepoError> {
    let plaintext = serde_json::to_vec(passwords).map_err(|error| RepoError::Corrupt {
        path: key_path(namespace).to_string(),
        reason: error.to_string(),
    })?;
    let (nonce, sealed) = master.seal(namespace, &plaintext)?;
    let file = SealedFile {
        version: 1,
        namespace: namespace.to_string(),
        encryption: AES_256_GCM_NAME.into(),
        nonce: BASE64.encode(nonce),
        data: BASE64.encode(sealed),
    };
    serde_json::to_vec_pretty(&file).map_err(|error| RepoError::Corrupt {
        path: key_path(namespace).to_string(),
        reason: error.to_string(),
    })
}

/// The last guard before a copy reaches the bucket: it must say AES-256-GCM, carry a nonce
/// of the right length, and its data must not be the passwords' JSON in the clear.
fn refuse_unsealed(namespace: &str, body: &[u8], passwords: &Passwords) -> Result<(), RepoError> {
    let unsealed = || RepoError::UnsealedKeyCopy(namespace.to_string());
    let file: SealedFile = serde_json::from_slice(body).map_err(|_| unsealed())?;
    let nonce = BASE64.decode(&file.nonce).map_err(|_| unsealed())?;
    let data = BASE64.decode(&file.data).map_err(|_| unsealed())?;
    let plaintext = serde_json::to_vec(passwords).map_err(|_| unsealed())?;
    if file.encryption != AES_256_GCM_NAME
        || nonce.len() != NONCE_LEN
        || data
            .windows(plaintext.len().max(1))
            .any(|window| window == plaintext.as_slice())
    {
        return Err(unsealed());
    }
    Ok(())
}

/// A bucket copy opened: the passwords, and whether the copy was an unsealed one from before
/// a master key was required (to be written again sealed).
struct Opened {
    passwords: Passwords,
    was_unsealed: bool,
}

fn open_file(master: &MasterKey, namespace: &str, bytes: &[u8]) -> Result<Opened, RepoError> {
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
    let (plaintext, was_unsealed) = match file.encryption.as_str() {
        AES_256_GCM_NAME => {
            let nonce = BASE64
                .decode(&file.nonce)
                .map_err(|error| corrupt(error.to_string()))?;
            (master.open(namespace, &nonce, &data)?, false)
        }
        PLAIN_NAME => (data, true),
        other => return Err(corrupt(format!("unknown encryption `{other}`"))),
    };
    let passwords =
        serde_json::from_slice(&plaintext).map_err(|error| corrupt(error.to_string()))?;
    Ok(Opened {
        passwords,
        was_unsealed,
    })
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
/// always, sealed with the master key (which is therefore not optional).
#[derive(Clone)]
pub struct KeyStore {
    store: Arc<dyn ObjectStore>,
    master: MasterKey,
    secrets: Option<SecretStore>,
}

impl KeyStore {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        master: MasterKey,
        secrets: Option<SecretStore>,
    ) -> Self {
        KeyStore {
            store,
            master,
            secrets,
        }
    }

    /// The namespace's passwords, or `None` when it has none yet. A bucket copy found while
    /// the Secret is missing (a fresh cluster) is written back to the Secret; an unsealed copy
    /// from an earlier version is written again sealed.
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
        let opened = open_file(&self.master, namespace, &bytes)?;
        if opened.was_unsealed {
            self.write_sealed(namespace, &opened.passwords).await?;
        }
        if let Some(secrets) = &self.secrets {
            tracing::info!(
                namespace,
                "recreating the password Secret from the bucket copy"
            );
            secrets.save(namespace, &opened.passwords).await?;
        }
        Ok(Some(opened.passwords))
    }

    /// Saves the bucket copy first (it is the one that survives the cluster), then the Secret.
    pub async fn save(&self, namespace: &str, passwords: &Passwords) -> Result<(), RepoError> {
        self.write_sealed(namespace, passwords).await?;
        if let Some(secrets) = &self.secrets {
            secrets.save(namespace, passwords).await?;
        }
        Ok(())
    }

    async fn write_sealed(&self, namespace: &str, passwords: &Passwords) -> Result<(), RepoError> {
        let path = key_path(namespace);
        let body = seal_file(&self.master, namespace, passwords)?;
        refuse_unsealed(namespace, &body, passwords)?;
        self.store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|source| RepoError::Store {
                operation: "write",
                path: path.to_string(),
                source,
            })?;
        Ok(())
    }

    /// Seals every bucket copy an earlier version wrote unsealed (when it ran without a master
    /// key), so they do not wait for their namespace's next backup. Returns the namespaces
    /// sealed; a copy that cannot be read or written is logged and left for the next load of
    /// its namespace, which seals it too.
    pub async fn seal_unsealed_copies(&self) -> Result<Vec<String>, RepoError> {
        let prefix = Path::from(KEYS_PREFIX);
        let listed: Vec<_> =
            self.store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|source| RepoError::Store {
                    operation: "list",
                    path: prefix.to_string(),
                    source,
                })?;
        let mut sealed = Vec::new();
        for object in listed {
            let Some(namespace) = object
                .location
                .filename()
                .and_then(|name| name.strip_suffix(".json"))
                .map(str::to_string)
            else {
                continue;
            };
            let resealed = async {
                let Some(bytes) = read_optional(&*self.store, &object.location).await? else {
                    return Ok(false);
                };
                let opened = open_file(&self.master, &namespace, &bytes)?;
                if opened.was_unsealed {
                    self.write_sealed(&namespace, &opened.passwords).await?;
                }
                Ok::<_, RepoError>(opened.was_unsealed)
            };
            match resealed.await {
                Ok(true) => sealed.push(namespace),
                Ok(false) => {}
                Err(error) => tracing::warn!(
                    namespace,
                    %error,
                    "cannot check whether the bucket copy of the password is sealed"
                ),
            }
        }
        if !sealed.is_empty() {
            tracing::warn!(
                namespaces = ?sealed,
                "sealed bucket copies of repository passwords that an earlier version stored \
                 unencrypted; copies of them made before now (bucket versioning, replicas, \
                 backups of the bucket) still hold the passwords in the clear"
            );
        }
        Ok(sealed)
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
pub(crate) mod tests {
    use stowage_storage_location::object_store::memory::InMemory;

    use super::*;

    fn passwords(current: &str) -> Passwords {
        Passwords {
            current: current.into(),
            pending: None,
        }
    }

    /// A bucket copy of `password` sealed with `master`, for tests of other modules.
    pub(crate) fn seal_with(master: &MasterKey, namespace: &str, password: &str) -> Vec<u8> {
        seal_file(master, namespace, &passwords(password)).unwrap()
    }

    /// Whether `master` opens `sealed`.
    pub(crate) fn opens_with(master: &MasterKey, namespace: &str, sealed: &[u8]) -> bool {
        open_file(master, namespace, sealed).is_ok()
    }

    /// A copy as versions without a required master key wrote it (`encryption: none`).
    fn legacy_unsealed(namespace: &str, passwords: &Passwords) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "version": 1,
            "namespace": namespace,
            "encryption": "none",
            "nonce": "",
            "data": BASE64.encode(serde_json::to_vec(passwords).unwrap()),
        }))
        .unwrap()
    }

    fn encryption_of(bytes: &[u8]) -> String {
        let file: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        file["encryption"].as_str().unwrap().to_string()
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
        let sealed = seal_file(&master, "team-a", &passwords("p4ssw0rd-xyz")).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("p4ssw0rd-xyz"));
        assert_eq!(encryption_of(&sealed), "AES-256-GCM");
        let opened = open_file(&master, "team-a", &sealed).unwrap();
        assert_eq!(opened.passwords.current, "p4ssw0rd-xyz");
        assert!(!opened.was_unsealed);
    }

    #[test]
    fn wrong_master_key_or_moved_file_does_not_open() {
        let master = MasterKey::from_secret_text("correct horse");
        let sealed = seal_file(&master, "team-a", &passwords("pw")).unwrap();
        let other = MasterKey::from_secret_text("battery staple");
        assert!(matches!(
            open_file(&other, "team-a", &sealed),
            Err(RepoError::MasterKeyMismatch(_))
        ));
        // Copied under another namespace's name: the namespace is bound into the seal.
        let mut file: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        file["namespace"] = "team-b".into();
        let moved = serde_json::to_vec(&file).unwrap();
        assert!(open_file(&master, "team-b", &moved).is_err());
    }

    #[test]
    fn an_unsealed_copy_is_refused_by_the_write_guard() {
        let master = MasterKey::from_secret_text("m");
        let saved = passwords("the-password-in-the-clear");
        let plain = legacy_unsealed("ns", &saved);
        assert!(matches!(
            refuse_unsealed("ns", &plain, &saved),
            Err(RepoError::UnsealedKeyCopy(namespace)) if namespace == "ns"
        ));
        // Claiming AES-256-GCM with the data still in the clear is refused too.
        let mut lying: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        lying["encryption"] = AES_256_GCM_NAME.into();
        lying["nonce"] = BASE64.encode([0u8; NONCE_LEN]).into();
        let lying = serde_json::to_vec(&lying).unwrap();
        assert!(matches!(
            refuse_unsealed("ns", &lying, &saved),
            Err(RepoError::UnsealedKeyCopy(_))
        ));
        let sealed = seal_file(&master, "ns", &saved).unwrap();
        refuse_unsealed("ns", &sealed, &saved).unwrap();
    }

    #[tokio::test]
    async fn bucket_store_round_trips_and_keeps_pending_password() {
        let store = KeyStore::new(
            Arc::new(InMemory::new()),
            MasterKey::from_secret_text("m"),
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

    #[tokio::test]
    async fn unsealed_copies_of_earlier_versions_are_read_and_written_again_sealed() {
        let bucket = Arc::new(InMemory::new());
        let master = MasterKey::from_secret_text("m");
        let store = KeyStore::new(bucket.clone(), master.clone(), None);
        let legacy = Passwords {
            current: "written-before-a-master-key-was-required".into(),
            pending: None,
        };
        for namespace in ["loaded", "swept"] {
            bucket
                .put(
                    &key_path(namespace),
                    PutPayload::from(legacy_unsealed(namespace, &legacy)),
                )
                .await
                .unwrap();
        }
        let stored = async |namespace: &str| {
            read_optional(&*bucket, &key_path(namespace))
                .await
                .unwrap()
                .unwrap()
        };

        // Read on first use of the namespace, and sealed in the same step.
        assert_eq!(store.load("loaded").await.unwrap(), Some(legacy.clone()));
        let after = stored("loaded").await;
        assert_eq!(encryption_of(&after), "AES-256-GCM");
        assert!(!String::from_utf8_lossy(&after).contains(&legacy.current));
        assert!(opens_with(&master, "loaded", &after));

        // The start-up sweep seals the rest; a sealed copy is left as it is.
        let untouched = stored("loaded").await;
        assert_eq!(store.seal_unsealed_copies().await.unwrap(), vec!["swept"]);
        assert_eq!(encryption_of(&stored("swept").await), "AES-256-GCM");
        assert_eq!(stored("loaded").await, untouched);
        assert_eq!(store.load("swept").await.unwrap(), Some(legacy));
        assert!(store.seal_unsealed_copies().await.unwrap().is_empty());
    }
}
