//! Where the master key comes from: given to the process (a file or the environment), or kept
//! in the Secret `stowage-master-key` of stowage's namespace, which the repo-manager creates
//! itself on its first start when none exists. There is no third way: without a master key the
//! repo-manager does not start, so a repository password is never written to the bucket
//! unsealed.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::keys::MasterKey;

/// The Secret holding the master key, in stowage's namespace (the Deployment also reads it
/// into `STOWAGE_MASTER_KEY`, optionally, so a restarted pod has it from the environment).
pub const MASTER_KEY_SECRET: &str = "stowage-master-key";
/// The Secret's data key.
pub const MASTER_KEY_SECRET_KEY: &str = "master-key";

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("Kubernetes Secret {secret}: {source}")]
    Kubernetes {
        secret: String,
        source: Box<kube::Error>,
    },
    #[error(
        "Kubernetes Secret {secret} exists but has no non-empty `{MASTER_KEY_SECRET_KEY}` key; \
         it is never overwritten (it seals every repository password in the bucket): put the \
         master key there, or delete the Secret to have a new one generated"
    )]
    EmptySecret { secret: String },
    #[error(
        "Kubernetes Secret {secret} was created by someone else at the same time (409 \
         AlreadyExists) but cannot be read back"
    )]
    VanishedAfterConflict { secret: String },
    #[error("random number generator failed")]
    Random,
}

/// What a create of the Secret ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    /// 409: another process created it first.
    AlreadyExists,
}

/// The Secret API as the master key needs it: the real one is [`KubeMasterKeySecret`], the
/// unit tests' an in-memory fake.
pub trait MasterKeySecret {
    /// `namespace/name`, for messages.
    fn describe(&self) -> String;
    /// `None` when the Secret does not exist; `Some(None)` when it exists without the key.
    async fn read(&self) -> Result<Option<Option<String>>, MasterKeyError>;
    async fn create(&self, value: &str) -> Result<Created, MasterKeyError>;
}

/// The master key from the Secret, creating the Secret with a new random key when there is
/// none. Race-safe: two repo-managers starting at once both try to create it, the API server
/// accepts one and answers the other 409, which then reads and uses the winner's key.
pub async fn from_secret_or_create(
    secret: &impl MasterKeySecret,
) -> Result<MasterKey, MasterKeyError> {
    if let Some(stored) = secret.read().await? {
        return key_from(secret, stored);
    }
    let text = generate_key_text()?;
    match secret.create(&text).await? {
        Created::Created => {
            tracing::warn!(
                secret = %secret.describe(),
                "created a new master key to seal repository passwords in the bucket: keep a \
                 copy outside the cluster, a new cluster needs it to open the repositories"
            );
            Ok(MasterKey::from_secret_text(&text))
        }
        Created::AlreadyExists => {
            tracing::info!(
                secret = %secret.describe(),
                "another process created the master key Secret first: using its key"
            );
            match secret.read().await? {
                Some(stored) => key_from(secret, stored),
                None => Err(MasterKeyError::VanishedAfterConflict {
                    secret: secret.describe(),
                }),
            }
        }
    }
}

fn key_from(
    secret: &impl MasterKeySecret,
    stored: Option<String>,
) -> Result<MasterKey, MasterKeyError> {
    match stored.filter(|text| !text.trim().is_empty()) {
        Some(text) => Ok(MasterKey::from_secret_text(&text)),
        None => Err(MasterKeyError::EmptySecret {
            secret: secret.describe(),
        }),
    }
}

/// 32 random bytes, hex-encoded: text, so the same value works from the Secret, from
/// `STOWAGE_MASTER_KEY` (the Deployment's secretKeyRef) and from a file.
fn generate_key_text() -> Result<String, MasterKeyError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| MasterKeyError::Random)?;
    Ok(hex::encode(bytes))
}

/// The Secret in the Kubernetes API.
pub struct KubeMasterKeySecret {
    api: Api<Secret>,
    namespace: String,
}

impl KubeMasterKeySecret {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        KubeMasterKeySecret {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
        }
    }

    fn error(&self, source: kube::Error) -> MasterKeyError {
        MasterKeyError::Kubernetes {
            secret: self.describe(),
            source: Box::new(source),
        }
    }
}

impl MasterKeySecret for KubeMasterKeySecret {
    fn describe(&self) -> String {
        format!("{}/{MASTER_KEY_SECRET}", self.namespace)
    }

    async fn read(&self) -> Result<Option<Option<String>>, MasterKeyError> {
        let secret = self
            .api
            .get_opt(MASTER_KEY_SECRET)
            .await
            .map_err(|error| self.error(error))?;
        Ok(secret.map(|secret| {
            secret
                .data
                .and_then(|mut data| data.remove(MASTER_KEY_SECRET_KEY))
                .map(|value| String::from_utf8_lossy(&value.0).into_owned())
        }))
    }

    async fn create(&self, value: &str) -> Result<Created, MasterKeyError> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(MASTER_KEY_SECRET.to_string()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "stowage".to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                MASTER_KEY_SECRET_KEY.to_string(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(Created::Created),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Created::AlreadyExists),
            Err(error) => Err(self.error(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// An in-memory Secret. `rival` is what another process creates between this one's read
    /// and its create (the race), `None` for no race.
    #[derive(Default)]
    struct FakeSecret {
        stored: Mutex<Option<Option<String>>>,
        rival: Option<String>,
        creates: Mutex<Vec<String>>,
    }

    impl MasterKeySecret for FakeSecret {
        fn describe(&self) -> String {
            "stowage/stowage-master-key".into()
        }

        async fn read(&self) -> Result<Option<Option<String>>, MasterKeyError> {
            Ok(self.stored.lock().unwrap().clone())
        }

        async fn create(&self, value: &str) -> Result<Created, MasterKeyError> {
            self.creates.lock().unwrap().push(value.to_string());
            let mut stored = self.stored.lock().unwrap();
            if let Some(rival) = &self.rival {
                *stored = Some(Some(rival.clone()));
            }
            if stored.is_some() {
                return Ok(Created::AlreadyExists);
            }
            *stored = Some(Some(value.to_string()));
            Ok(Created::Created)
        }
    }

    /// Whether two master keys are the same key: what one seals, the other opens.
    fn same_key(a: &MasterKey, b: &MasterKey) -> bool {
        let sealed = crate::keys::tests::seal_with(a, "ns", "pw");
        crate::keys::tests::opens_with(b, "ns", &sealed)
    }

    #[tokio::test]
    async fn missing_secret_is_created_with_a_random_key_that_is_then_reused() {
        let secret = FakeSecret::default();
        let first = from_secret_or_create(&secret).await.unwrap();
        let created = secret.creates.lock().unwrap().clone();
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].len(), 64, "32 random bytes, hex");
        assert!(same_key(&first, &MasterKey::from_secret_text(&created[0])));

        let again = from_secret_or_create(&secret).await.unwrap();
        assert_eq!(secret.creates.lock().unwrap().len(), 1, "no second create");
        assert!(same_key(&first, &again));

        let other = FakeSecret::default();
        let other_key = from_secret_or_create(&other).await.unwrap();
        assert!(!same_key(&first, &other_key), "each new key is random");
    }

    #[tokio::test]
    async fn losing_the_create_race_uses_the_winner_s_key() {
        let secret = FakeSecret {
            rival: Some("the-winner-s-key".into()),
            ..Default::default()
        };
        let key = from_secret_or_create(&secret).await.unwrap();
        assert_eq!(secret.creates.lock().unwrap().len(), 1);
        assert!(same_key(
            &key,
            &MasterKey::from_secret_text("the-winner-s-key")
        ));
        assert_eq!(
            *secret.stored.lock().unwrap(),
            Some(Some("the-winner-s-key".to_string())),
            "the winner's Secret is not overwritten"
        );
    }

    #[tokio::test]
    async fn existing_secret_is_used_and_an_empty_one_is_refused_not_overwritten() {
        let secret = FakeSecret {
            stored: Mutex::new(Some(Some("operator-chosen".into()))),
            ..Default::default()
        };
        let key = from_secret_or_create(&secret).await.unwrap();
        assert!(same_key(
            &key,
            &MasterKey::from_secret_text("operator-chosen")
        ));
        assert!(secret.creates.lock().unwrap().is_empty());

        for stored in [None, Some("  \n".to_string())] {
            let empty = FakeSecret {
                stored: Mutex::new(Some(stored)),
                ..Default::default()
            };
            let error = from_secret_or_create(&empty).await.unwrap_err();
            assert!(matches!(error, MasterKeyError::EmptySecret { .. }));
            assert!(error.to_string().contains("stowage/stowage-master-key"));
            assert!(empty.creates.lock().unwrap().is_empty());
        }
    }
}
