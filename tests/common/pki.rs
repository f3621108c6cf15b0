//! A throwaway PKI for tests: a CA and a server certificate for the fake intake's names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

/// Which TLS versions the fake intake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersions {
    Any,
    Tls12Only,
    Tls13Only,
}

#[derive(Clone)]
pub struct TestPki {
    ca_pem: String,
    leaf: CertificateDer<'static>,
    key: Arc<Vec<u8>>,
}

/// The names every default test certificate carries.
pub const INTAKE_NAMES: &[&str] = &[
    "intake.test",
    "localhost",
    "mx1.intake.test",
    "mx2.intake.test",
    "127.0.0.1",
    "::1",
];

impl TestPki {
    pub fn new() -> TestPki {
        TestPki::with_names(INTAKE_NAMES)
    }

    /// A fresh CA (independent of every other) and a leaf for exactly these names.
    pub fn with_names(names: &[&str]) -> TestPki {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tdc-milter test CA");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca cert");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf = rcgen::CertificateParams::new(names)
            .expect("leaf params")
            .signed_by(&leaf_key, &ca)
            .expect("leaf cert");
        TestPki {
            ca_pem: ca.pem(),
            leaf: leaf.der().clone(),
            key: Arc::new(leaf_key.serialize_der()),
        }
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate to `dir/ca-N.pem` and returns the path.
    pub fn write_ca_file(&self, dir: &Path) -> PathBuf {
        let mut n = 0;
        let path = loop {
            let candidate = dir.join(format!("ca-{n}.pem"));
            if !candidate.exists() {
                break candidate;
            }
            n += 1;
        };
        std::fs::write(&path, &self.ca_pem).expect("write CA file");
        path
    }

    pub fn server_config(&self, versions: TlsVersions) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = match versions {
            TlsVersions::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersions::Tls12Only => &[&rustls::version::TLS12],
            TlsVersions::Tls13Only => &[&rustls::version::TLS13],
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.as_ref().clone()));
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf.clone()], key)
            .expect("server cert");
        Arc::new(config)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}
