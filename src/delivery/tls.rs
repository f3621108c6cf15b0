//! The TLS client configuration for the intake: TLS 1.2 or 1.3 only, the ring provider
//! chosen explicitly, system roots plus the configured CA file.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CipherSuite, ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore};

use crate::config::TlsSettings;

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

/// Builds the client configuration. Versions below 1.2 are not implemented by rustls at
/// all, so "TLS ≥ 1.2" holds by construction; we still name both versions explicitly.
pub fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsConfigError::Rustls)?;
    let config = if settings.verify {
        builder
            .with_root_certificates(root_store(settings.ca_file.as_deref())?)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
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

/// The name to verify the intake's certificate against: the MX host name, or the host
/// as written in a static route (an IP address verifies against an IP SAN).
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host.trim_end_matches('.');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string()).ok()
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

/// `delivery.tls.verify: false`: encryption without authentication, for labs. Handshake
/// signatures are still checked, so the session keys are still bound to the certificate.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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
        };
        let err = client_config(&settings).expect_err("must fail");
        assert!(err
            .to_string()
            .starts_with("cannot read CA certificates from /nonexistent/ca.pem"));
    }
}
