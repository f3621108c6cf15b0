//! A throwaway test PKI (rcgen, ECDSA P-256): one CA and one server leaf signed by it.
//!
//! Every `TestPki` has its own CA key and its own CA name, so a second `TestPki::new()`
//! (or `TestPki::rogue()`) is a CA the first one's clients do not trust. The distinct
//! name matters: with equal names the verifier would find the "right" issuer by name
//! and report a bad signature instead of the realistic `UnknownIssuer`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The TLS versions a test server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersions {
    Any,
    Tls12Only,
    Tls13Only,
}

/// The names on the default leaf: the intake's domain, its MX hosts and loopback.
pub const INTAKE_NAMES: &[&str] = &[
    "intake.test",
    "localhost",
    "mx1.intake.test",
    "mx2.intake.test",
    "127.0.0.1",
    "::1",
];

/// Numbers the CAs of one test process, so that no two share a name.
static CA_SERIAL: AtomicUsize = AtomicUsize::new(1);

#[derive(Clone)]
pub struct TestPki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    /// PKCS#8 DER of the leaf key; `PrivateKeyDer` is not `Clone`, so keep the bytes.
    leaf_key: Arc<Vec<u8>>,
}

impl TestPki {
    /// A fresh CA and a leaf valid for [`INTAKE_NAMES`].
    pub fn new() -> TestPki {
        TestPki::build("tdc-milter test CA", INTAKE_NAMES)
    }

    /// A fresh CA and a leaf for exactly these names (e.g. `&["wrong.example"]` for a
    /// certificate that is trusted but does not match the host).
    pub fn with_names(names: &[&str]) -> TestPki {
        TestPki::build("tdc-milter test CA", names)
    }

    /// A CA that nobody trusts, with a leaf for the usual names: the impostor intake.
    /// (Any other `TestPki` is just as foreign; this name only makes tests read well.)
    pub fn rogue() -> TestPki {
        TestPki::build("rogue CA", INTAKE_NAMES)
    }

    fn build(ca_name: &str, names: &[&str]) -> TestPki {
        let serial = CA_SERIAL.fetch_add(1, Ordering::Relaxed);
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{ca_name} {serial}"));
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");

        // rcgen turns names that parse as IP addresses into IP SANs, the rest into DNS SANs.
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut leaf_params = rcgen::CertificateParams::new(sans).expect("leaf params");
        if let Some(first) = names.first() {
            leaf_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *first);
        }
        leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca)
            .expect("leaf certificate");

        TestPki {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            leaf: leaf.der().clone(),
            leaf_key: Arc::new(leaf_key.serialize_der()),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// Writes the CA certificate as `dir/ca.pem` and returns the path. If that file
    /// already exists (a second CA in the same temp dir), it picks `ca-2.pem`, `ca-3.pem`…
    /// rather than silently replacing a CA another part of the test relies on.
    pub fn write_ca_file(&self, dir: &Path) -> PathBuf {
        let path = std::iter::once(dir.join("ca.pem"))
            .chain((2..).map(|n| dir.join(format!("ca-{n}.pem"))))
            .find(|p| !p.exists())
            .expect("a free file name");
        std::fs::write(&path, &self.ca_pem).expect("write CA file");
        path
    }

    /// Roots holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).expect("add test CA");
        roots
    }

    /// A server config presenting the leaf. The provider is named explicitly: `builder()`
    /// panics if feature unification ever compiles in a second provider.
    pub fn server_config(&self, versions: TlsVersions) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.to_vec()));
        let config = ServerConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(protocol_versions(versions))
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf.clone()], key)
            .expect("server certificate");
        Arc::new(config)
    }

    /// A client config trusting only this CA (for tests that play the client).
    pub fn client_config(&self, versions: TlsVersions) -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(protocol_versions(versions))
            .expect("TLS versions")
            .with_root_certificates(self.root_store())
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn protocol_versions(versions: TlsVersions) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match versions {
        TlsVersions::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersions::Tls12Only => &[&rustls::version::TLS12],
        TlsVersions::Tls13Only => &[&rustls::version::TLS13],
    }
}
