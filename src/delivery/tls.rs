//! The TLS client configuration for the intake: TLS 1.2 or 1.3 only, the ring provider
//! chosen explicitly, system roots plus the configured CA file, and the certificate
//! names of `delivery.tls.match` (see [`super::cert_match`]).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CipherSuite, ClientConfig, ProtocolVersion, RootCertStore};

use tokio_rustls::TlsConnector;

use super::cert_match::{accepted_names, Accepted, MatchingVerifier};
use crate::config::{CertMatch, TlsSettings};

#[derive(Debug)]
pub enum TlsConfigError {
    CaFile(String, String),
    NoRoots,
    Rustls(rustls::Error),
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsConfigError::CaFile(path, e) => {
                write!(f, "cannot read CA certificates from {path}: {e}")
            }
            TlsConfigError::NoRoots => write!(
                f,
                "no trusted CA certificates: the system store is empty and delivery.tls.ca_file is not set"
            ),
            TlsConfigError::Rustls(e) => write!(f, "cannot build the TLS configuration: {e}"),
        }
    }
}

impl std::error::Error for TlsConfigError {}

fn provider() -> Arc<CryptoProvider> {
    // Explicit, so a second provider compiled in by some dependency can never make
    // rustls panic over which one to use.
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS client side of every session to the intake. With verification on, each
/// (destination, host) pair gets its own configuration, whose verifier accepts exactly
/// the names `delivery.tls.match` gives for it; the pair's configuration is kept, so
/// TLS session resumption (which rustls allows only with the same verifier) still
/// works between connections to the same host.
pub struct TlsClient {
    template: Arc<ClientConfig>,
    check: Option<NameCheck>,
}

struct NameCheck {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    rules: Vec<CertMatch>,
    configs: Mutex<HashMap<(String, String), Arc<ClientConfig>>>,
}

/// More (destination, host) pairs than any route has; past it the kept configurations
/// are dropped and built again, so a DNS answer that keeps changing cannot grow memory.
const KEPT_CONFIGS: usize = 256;

impl TlsClient {
    /// Versions below 1.2 are not implemented by rustls at all, so "TLS ≥ 1.2" holds by
    /// construction; we still name both versions explicitly.
    pub fn new(settings: &TlsSettings) -> Result<TlsClient, TlsConfigError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsConfigError::Rustls)?;
        if !settings.verify {
            let config = builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(
                    MatchingVerifier::accept_any(provider()),
                ))
                .with_no_client_auth();
            return Ok(TlsClient {
                template: Arc::new(config),
                check: None,
            });
        }
        let roots = Arc::new(root_store(settings.ca_file.as_deref())?);
        let check = NameCheck {
            roots: roots.clone(),
            provider: provider(),
            rules: settings.cert_match.clone(),
            configs: Mutex::new(HashMap::new()),
        };
        // The template's verifier accepts no name: only the per-pair copies are used.
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(MatchingVerifier::new(
                roots,
                provider(),
                Vec::new(),
            )))
            .with_no_client_auth();
        Ok(TlsClient {
            template: Arc::new(config),
            check: Some(check),
        })
    }

    /// The names a certificate must carry for this destination and host; `None` when
    /// verification is off.
    pub fn accepted(&self, nexthop: &str, hostname: &str) -> Option<Vec<Accepted>> {
        self.check
            .as_ref()
            .map(|c| accepted_names(&c.rules, nexthop, hostname))
    }

    /// The connector for one session to `hostname`, routed for `nexthop`.
    pub fn connector(&self, nexthop: &str, hostname: &str) -> TlsConnector {
        let Some(check) = &self.check else {
            return TlsConnector::from(self.template.clone());
        };
        let key = (nexthop.to_ascii_lowercase(), hostname.to_ascii_lowercase());
        let mut configs = check
            .configs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(config) = configs.get(&key) {
            return TlsConnector::from(config.clone());
        }
        if configs.len() >= KEPT_CONFIGS {
            configs.clear();
        }
        let mut config = (*self.template).clone();
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(MatchingVerifier::new(
                check.roots.clone(),
                check.provider.clone(),
                accepted_names(&check.rules, nexthop, hostname),
            )));
        let config = Arc::new(config);
        configs.insert(key, config.clone());
        TlsConnector::from(config)
    }
}

fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    // Unreadable entries in the system store are skipped: one bad file there must not
    // stop journaling when the intake's CA is elsewhere in the store.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsConfigError::CaFile(shown.clone(), e.to_string()))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| TlsConfigError::CaFile(shown.clone(), e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TlsConfigError::CaFile(shown.clone(), e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsConfigError::CaFile(
                shown,
                "no PEM certificate in the file".into(),
            ));
        }
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoRoots);
    }
    Ok(roots)
}

/// The name sent as SNI: the MX host name, or the host as written in a static route.
/// Which certificate names are accepted is decided by [`TlsClient::accepted`].
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(bare_host(host).to_string()).ok()
}

/// A host as written or found (`mx1.intake.test.`, `[::1]`) without the trailing dot
/// and the brackets of an address literal.
pub fn bare_host(host: &str) -> &str {
    let host = host.trim_end_matches('.');
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// `TLSv1.2` / `TLSv1.3`, as the appliance logs them.
pub fn protocol_name(version: Option<ProtocolVersion>) -> String {
    match version {
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
        Some(other) => format!("{other:?}"),
        None => "unknown".into(),
    }
}

/// OpenSSL's cipher names, as the appliance logs them.
pub fn cipher_name(suite: Option<CipherSuite>) -> String {
    let Some(suite) = suite else {
        return "unknown".into();
    };
    let name = match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        }
        other => return format!("{other:?}"),
    };
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_appliance_log() {
        assert_eq!(protocol_name(Some(ProtocolVersion::TLSv1_2)), "TLSv1.2");
        assert_eq!(protocol_name(Some(ProtocolVersion::TLSv1_3)), "TLSv1.3");
        assert_eq!(
            cipher_name(Some(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)),
            "ECDHE-RSA-AES128-GCM-SHA256"
        );
        assert_eq!(
            cipher_name(Some(CipherSuite::TLS13_AES_256_GCM_SHA384)),
            "TLS_AES_256_GCM_SHA384"
        );
    }

    #[test]
    fn server_names_for_hosts_and_addresses() {
        assert!(matches!(
            server_name("mx1.intake.test."),
            Some(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(server_name("bad name!").is_none());
    }

    #[test]
    fn missing_ca_file_is_a_clear_error() {
        let settings = TlsSettings {
            verify: true,
            ca_file: Some("/nonexistent/ca.pem".into()),
            cert_match: CertMatch::defaults(),
        };
        let Err(err) = TlsClient::new(&settings) else {
            panic!("must fail")
        };
        assert!(err
            .to_string()
            .starts_with("cannot read CA certificates from /nonexistent/ca.pem"));
    }
}
