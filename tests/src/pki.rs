//! Certificates made in the test: a CA and leaf certificates whose DNS subjectAltName is the
//! identity a stowage service presents (`stowage-orchestrator`, …), written as PEM files the
//! binaries read with `--tls-cert/--tls-key/--tls-ca`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// One leaf certificate and its key, on disk and in memory.
pub struct IssuedCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority living in `dir`.
pub struct TestCa {
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub ca_path: PathBuf,
}

impl TestCa {
    /// A new CA; `name` keeps the files of two CAs in one dir apart.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        std::fs::create_dir_all(dir).expect("creating the PKI dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signing the CA");
        let ca_path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_path, issuer.pem()).expect("writing the CA");
        TestCa {
            dir: dir.to_path_buf(),
            issuer,
            ca_path,
        }
    }

    /// A certificate for `identity` (its DNS SAN and CN), also valid for 127.0.0.1 and
    /// `localhost` so it can serve tests, usable as server and as client certificate.
    pub fn issue(&self, identity: &str) -> IssuedCert {
        let mut params =
            CertificateParams::new(vec![identity.to_string(), "localhost".to_string()])
                .expect("leaf params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, identity);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing the leaf");
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let stem = self.dir.join(identity);
        let cert_path = stem.with_extension("crt");
        let key_path = stem.with_extension("key");
        std::fs::write(&cert_path, &cert_pem).expect("writing the certificate");
        std::fs::write(&key_path, &key_pem).expect("writing the key");
        IssuedCert {
            cert_path,
            key_path,
            cert_pem,
            key_pem,
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client that trusts this CA and presents `cert` (or no certificate).
    pub fn client_tls(&self, cert: Option<&IssuedCert>) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.pem()));
        match cert {
            Some(cert) => config.identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem)),
            None => config,
        }
    }
}

impl IssuedCert {
    /// `--tls-cert <cert> --tls-key <key> --tls-ca <ca>`
    pub fn server_args(&self, ca: &TestCa) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert_path.display().to_string(),
            "--tls-key".into(),
            self.key_path.display().to_string(),
            "--tls-ca".into(),
            ca.ca_path.display().to_string(),
        ]
    }
}
