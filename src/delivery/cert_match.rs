//! Which names an intake certificate may carry (`delivery.tls.match`), and the
//! certificate verifier that enforces them.
//!
//! A chain that ends at a trusted CA proves only that the peer owns the names in its
//! certificate. Which of those names make it *the intake* is the question here: the
//! MX host name comes from an unauthenticated DNS answer, so trusting it alone lets
//! whoever forges one MX reply receive every journal at a host with a valid
//! certificate for its own name. The rules and what each trusts are described in
//! `docs/SECURITY.md` ("Whose certificate is the intake's").

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore};

use crate::config::CertMatch;

/// One name, or family of names, that makes a certificate the intake's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Exactly this DNS name or IP address (a wildcard in the certificate may cover it).
    Exact(String),
    /// Any DNS name strictly below this domain.
    Below(String),
}

impl fmt::Display for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accepted::Exact(name) => f.write_str(name),
            Accepted::Below(domain) => write!(f, "any name under .{domain}"),
        }
    }
}

/// The accepted names for one connection: `nexthop` is the destination the route
/// names (the intake domain, or the listed host), `hostname` the host connected to.
pub fn accepted_names(rules: &[CertMatch], nexthop: &str, hostname: &str) -> Vec<Accepted> {
    let clean = |name: &str| super::tls::bare_host(name).to_ascii_lowercase();
    let (nexthop, hostname) = (clean(nexthop), clean(hostname));
    let mut out: Vec<Accepted> = Vec::new();
    for rule in rules {
        let accepted = match rule {
            CertMatch::Nexthop => Accepted::Exact(nexthop.clone()),
            // Nothing lies below an IP address.
            CertMatch::DotNexthop if nexthop.parse::<std::net::IpAddr>().is_ok() => continue,
            CertMatch::DotNexthop => Accepted::Below(nexthop.clone()),
            CertMatch::Hostname => Accepted::Exact(hostname.clone()),
            CertMatch::Name(name) => Accepted::Exact(name.clone()),
            CertMatch::Under(domain) => Accepted::Below(domain.clone()),
        };
        if !out.contains(&accepted) {
            out.push(accepted);
        }
    }
    out
}

/// The accepted names in words, for log lines and `probe`.
pub fn describe(accepted: &[Accepted]) -> String {
    accepted
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `name`, a DNS name from a certificate (possibly `*.` wildcard), lies
/// strictly below `domain`. A wildcard `*.domain` does: it covers `x.domain` only.
fn is_below(name: &str, domain: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let base = name.strip_prefix("*.").unwrap_or(&name);
    let below = base
        .strip_suffix(domain)
        .is_some_and(|head| head.ends_with('.') && head.len() > 1);
    below || (name.starts_with("*.") && base == domain)
}

/// Checks that the certificate (`end_entity`, already parsed as `parsed`) carries one
/// of the `accepted` names. Exact names go through webpki's own matching (wildcards,
/// IP SANs); only the "below" test, and the error, read its DNS names themselves.
fn check_names(
    end_entity: &CertificateDer<'_>,
    parsed: &ParsedCertificate<'_>,
    accepted: &[Accepted],
) -> Result<(), rustls::Error> {
    let mut presented: Option<Vec<String>> = None;
    let mut dns_names = || -> Vec<String> {
        presented
            .get_or_insert_with(|| {
                webpki::EndEntityCert::try_from(end_entity)
                    .map(|cert| cert.valid_dns_names().map(str::to_string).collect())
                    .unwrap_or_default()
            })
            .clone()
    };
    for want in accepted {
        let ok = match want {
            Accepted::Exact(name) => ServerName::try_from(name.as_str())
                .is_ok_and(|server_name| verify_server_name(parsed, &server_name).is_ok()),
            Accepted::Below(domain) => dns_names().iter().any(|n| is_below(n, domain)),
        };
        if ok {
            return Ok(());
        }
    }
    let presented = dns_names();
    Err(rustls::Error::InvalidCertificate(CertificateError::Other(
        OtherError(Arc::new(NotTheIntake {
            presented,
            accepted: describe(accepted),
        })),
    )))
}

/// A certificate from a trusted CA that names none of the accepted names.
#[derive(Debug)]
pub struct NotTheIntake {
    presented: Vec<String>,
    accepted: String,
}

impl fmt::Display for NotTheIntake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = if self.presented.is_empty() {
            "no host name".to_string()
        } else {
            self.presented.join(", ")
        };
        write!(
            f,
            "certificate not valid for the intake: it names {names}; delivery.tls.match accepts {}",
            self.accepted
        )
    }
}

impl std::error::Error for NotTheIntake {}

/// The verifier of one route target: the chain must end at a trusted root, and the
/// certificate must carry one of the accepted names. The name rustls passes in (the
/// SNI, which is the host connected to) plays no part. With `delivery.tls.verify:
/// false` it checks nothing about the certificate: encryption without
/// authentication, for labs; handshake signatures are still checked either way, so
/// the session keys stay bound to the certificate.
#[derive(Debug)]
pub struct MatchingVerifier {
    provider: Arc<CryptoProvider>,
    /// The trusted roots and the accepted names; `None`: verification is off.
    check: Option<(Arc<RootCertStore>, Vec<Accepted>)>,
}

impl MatchingVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        accepted: Vec<Accepted>,
    ) -> MatchingVerifier {
        MatchingVerifier {
            provider,
            check: Some((roots, accepted)),
        }
    }

    pub fn accept_any(provider: Arc<CryptoProvider>) -> MatchingVerifier {
        MatchingVerifier {
            provider,
            check: None,
        }
    }
}

impl ServerCertVerifier for MatchingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some((roots, accepted)) = &self.check else {
            return Ok(ServerCertVerified::assertion());
        };
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        check_names(end_entity, &parsed, accepted)?;
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Our own name check's failure, if that is what `e` is.
pub fn not_the_intake(e: &rustls::Error) -> Option<&NotTheIntake> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<NotTheIntake>()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> Vec<CertMatch> {
        list.iter()
            .map(|r| match *r {
                "nexthop" => CertMatch::Nexthop,
                "dot-nexthop" => CertMatch::DotNexthop,
                "hostname" => CertMatch::Hostname,
                other => match other.strip_prefix('.') {
                    Some(d) => CertMatch::Under(d.into()),
                    None => CertMatch::Name(other.into()),
                },
            })
            .collect()
    }

    #[test]
    fn each_rule_names_what_it_trusts() {
        let all = rules(&[
            "nexthop",
            "dot-nexthop",
            "hostname",
            "mx.etd.cisco.com",
            ".cisco.com",
        ]);
        assert_eq!(
            accepted_names(&all, "Intake.Test.", "mx1.evil.test"),
            vec![
                Accepted::Exact("intake.test".into()),
                Accepted::Below("intake.test".into()),
                Accepted::Exact("mx1.evil.test".into()),
                Accepted::Exact("mx.etd.cisco.com".into()),
                Accepted::Below("cisco.com".into()),
            ]
        );
        // A static route to an address: the address, nothing below it, no repeats.
        assert_eq!(
            accepted_names(
                &rules(&["nexthop", "dot-nexthop", "hostname"]),
                "[::1]",
                "::1"
            ),
            vec![Accepted::Exact("::1".into())]
        );
        assert_eq!(
            describe(&accepted_names(&CertMatch::defaults(), "intake.test", "x")),
            "intake.test, any name under .intake.test, any name under .cisco.com"
        );
    }

    #[test]
    fn below_means_strictly_below() {
        assert!(is_below("mx1.intake.test", "intake.test"));
        assert!(is_below("A.B.Intake.Test", "intake.test"));
        assert!(is_below("*.intake.test", "intake.test"));
        assert!(is_below("*.eu.intake.test", "intake.test"));
        assert!(!is_below("intake.test", "intake.test"));
        assert!(!is_below("evilintake.test", "intake.test"));
        assert!(!is_below("intake.test.evil", "intake.test"));
        assert!(!is_below(".intake.test", "intake.test"));
        assert!(!is_below("*.test", "intake.test"));
    }
}
